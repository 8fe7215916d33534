/* wsh_strerror: text for every enum wsh_status and for -errno values
 * (status.h). */
#include "wshub/status.h"

#include <string.h>

const char *wsh_strerror(int code)
{
    switch (code) {
    case WSH_OK:
        return "success";
    case WSH_EAGAIN:
        return "need more input or would block";
    case WSH_EPROTO:
        return "protocol error";
    case WSH_EUTF8:
        return "invalid UTF-8 in a text message";
    case WSH_ETOOBIG:
        return "over a size limit";
    case WSH_EPOLICY:
        return "over a count or rate limit";
    case WSH_EINVAL:
        return "invalid argument";
    case WSH_ENOSPC:
        return "output buffer too small";
    case WSH_ENOMEM:
        return "out of memory";
    case WSH_ECLOSED:
        return "connection closing or closed";
    case WSH_EBACKPRESSURE:
        return "queued over the soft limit";
    case WSH_EDROPPED:
        return "dropped: over the hard limit";
    default:
        break;
    }
    /* -errno from the net layer. Our own codes start at -1000, and Linux
     * errno values stay far below that. */
    if (code < 0 && code > -1000) {
        const char *s = strerror(-code);
        return s != NULL ? s : "unknown error";
    }
    return "unknown error";
}
