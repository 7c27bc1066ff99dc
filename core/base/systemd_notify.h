/*
 * Notifications to systemd (Type=notify): READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1.
 * libsystemd's sd_notify blocks while the receiver's queue is full (the kernel queues only
 * net.unix.max_dgram_qlen datagrams), which would hold the signal thread, and with it every
 * reload and stop, for as long as nobody reads. These sends wait at most wait_ms, then give
 * the notification up with a warning. Without NOTIFY_SOCKET they do nothing.
 */
#ifndef WH_NOTIFY_H
#define WH_NOTIFY_H

/* 0 sent (or nothing to send to), -1 given up or failed */
int systemd_notify(const char *state, int wait_ms);

#endif
