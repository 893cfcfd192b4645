/* A wall clock stepped for one process (tests/clock.py builds and drives it):
 * LD_PRELOAD=libclockshift.so CLOCKSHIFT_FILE=path.
 *
 * CLOCK_REALTIME (and its coarse variant), gettimeofday() and time() read the real clock plus
 * the offset in seconds written in the file (e.g. "-3600" steps the clock back an hour), read
 * again at every call, so a test steps a running process's clock by rewriting the file.
 * CLOCK_MONOTONIC and the system clock itself are left alone.  Only open/read/close are used:
 * safe in any thread and in a signal handler.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double offset_seconds(void)
{
    const char *path = getenv("CLOCKSHIFT_FILE");
    char text[64];
    ssize_t n = 0;
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd < 0)
        return 0;
    n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return 0;
    text[n] = 0;
    return strtod(text, NULL);
}

static int (*real_clock_gettime)(clockid_t, struct timespec *);

int clock_gettime(clockid_t id, struct timespec *ts)
{
    if (!real_clock_gettime)
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        /* whole seconds and nanoseconds apart: an offset of centuries overflows nanoseconds */
        double offset = offset_seconds();
        long long seconds = (long long)floor(offset);
        ts->tv_sec += seconds;
        ts->tv_nsec += (long)((offset - (double)seconds) * 1e9);
        if (ts->tv_nsec >= 1000000000L) {
            ts->tv_sec += 1;
            ts->tv_nsec -= 1000000000L;
        }
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz)
{
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    (void)tz;
    if (rc == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
