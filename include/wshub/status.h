/* Status codes shared by every wshub layer.
 *
 * WSH_OK is 0. Our own codes are negative and start at -1000 so they never
 * collide with -errno, which the net layer returns straight from syscalls
 * (the libuv convention). wsh_strerror() covers both ranges. */
#ifndef WSHUB_STATUS_H
#define WSHUB_STATUS_H

#if defined(__GNUC__)
#define WSH_NODISCARD __attribute__((warn_unused_result))
#else
#define WSH_NODISCARD
#endif

enum wsh_status {
    WSH_OK = 0,
    /* Need more input, or the operation would block: call again later. */
    WSH_EAGAIN = -1000,
    /* Peer faults: close the connection with the close code given. */
    WSH_EPROTO = -1100,  /* protocol violation (1002 / HTTP 400) */
    WSH_EUTF8 = -1101,   /* invalid UTF-8 in a text message (1007) */
    WSH_ETOOBIG = -1102, /* over a size limit (1009 / HTTP 414, 431) */
    WSH_EPOLICY = -1103, /* over a count or rate limit (1008) */
    /* Caller faults. */
    WSH_EINVAL = -1200, /* invalid argument: a bug in the caller */
    WSH_ENOSPC = -1201, /* output buffer too small */
    /* Resources. */
    WSH_ENOMEM = -1300,
    WSH_ECLOSED = -1301,       /* the connection is closing or closed */
    WSH_EBACKPRESSURE = -1302, /* queued, but over the soft limit */
    WSH_EDROPPED = -1303       /* not queued: over the hard limit */
};

/* Returns a static, human-readable string for a wsh_status or a -errno
 * value. Never returns NULL. */
const char *wsh_strerror(int code);

#endif
