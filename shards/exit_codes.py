"""Process exit statuses the supervisor acts on."""

EXIT_OK = 0
EXIT_USAGE = 2  # bad flags or configuration: the operator must fix them
EXIT_PERMANENT = 3  # cannot run (corrupt log, data dir of another cluster...): not restarted
EXIT_DEPOSED = 4  # a primary whose log lease passed to a promoted replica: the supervisor restarts it as a replica
EXIT_NOT_PROMOTED = 5  # a replica told to take over found the primary still renewing its lease
