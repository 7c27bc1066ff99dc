/*
 * wapphook's exit statuses, as `wapphook --help` and docs/operations.md list them.
 */
#ifndef WH_EXIT_CODES_H
#define WH_EXIT_CODES_H

enum wh_exit {
    WH_EXIT_OK = 0,
    WH_EXIT_CONFIG = 1,     /* a configuration or runtime error; check/try: refused or failed */
    WH_EXIT_USAGE = 2,      /* the command line */
    WH_EXIT_SPOOL_SYNC = 3, /* the durable spool's fsync failed: the file is not trusted */
};

#endif
