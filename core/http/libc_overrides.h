/*
 * The libc functions wapphook replaces for the whole process (see libc_overrides.c), and the
 * real ones behind them for code that must bypass the replacement.
 */
#ifndef WH_LIBC_OVERRIDES_H
#define WH_LIBC_OVERRIDES_H

/* libc's close(), without counting the descriptor out of the client table */
int libc_close(int fd);

#endif
