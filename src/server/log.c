/* key=value log lines on stderr (STYLE.md B7). Each line is formatted in
 * full first and written with one write(2), so lines from several workers
 * never interleave. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

int wsh_log_level = WSH_LOG_INFO;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

int wsh_log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

void wsh_log(enum wsh_log_level lvl, const char *fmt, ...)
{
    if (!wsh_log_enabled(lvl))
        return;
    char line[1024];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ lvl=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[lvl]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

char *wsh_log_value(char *s)
{
    for (char *p = s; *p != '\0'; p++) {
        if (*p == '"')
            *p = '\'';
        else if ((unsigned char)*p < 0x20)
            *p = '?';
    }
    return s;
}
