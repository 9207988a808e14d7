/* preflight.c - what `ferry check` verifies about files `ferry run`
 * would open for writing (log files, the store) or bind (the console
 * socket), without creating or changing any. */
#include "ferry.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int dir_takes_file(const char *path, const char **err);

int ferry_path_writable(const char *path, const char **err)
{
    if (path == NULL || *path == '\0') {
        *err = "empty path";
        return FERRY_ERROR;
    }
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            *err = "is a directory";
            return FERRY_ERROR;
        }
        /* O_RDWR without O_CREAT or O_TRUNC: opens, changes nothing. */
        int fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd == -1) {
            *err = strerror(errno);
            return FERRY_ERROR;
        }
        close(fd);
        return FERRY_OK;
    }
    if (errno != ENOENT) {
        *err = strerror(errno);
        return FERRY_ERROR;
    }
    return dir_takes_file(path, err);
}

int ferry_socket_path_usable(const char *path, const char **err)
{
    struct stat st;
    if (path == NULL || *path == '\0') {
        *err = "empty path";
        return FERRY_ERROR;
    }
    if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
        *err = "the path exists and is not a socket";
        return FERRY_ERROR;
    }
    /* A stale socket is unlinked and bound again, a missing one bound:
     * either way its directory must take a file.  (Whether another
     * process listens on it is found by ferry run.) */
    return dir_takes_file(path, err);
}

/* Whether the directory of path lets ferry create path in it. */
static int dir_takes_file(const char *path, const char **err)
{
    static char msg[PATH_MAX + 128];
    struct stat st;
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL) {
        snprintf(dir, sizeof(dir), ".");
    } else if (slash == dir) {
        dir[1] = '\0';
    } else {
        *slash = '\0';
    }
    if (stat(dir, &st) != 0) {
        snprintf(msg, sizeof(msg), "directory %s: %s", dir, strerror(errno));
        *err = msg;
        return FERRY_ERROR;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(msg, sizeof(msg), "%s is not a directory", dir);
        *err = msg;
        return FERRY_ERROR;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        snprintf(msg, sizeof(msg), "cannot create a file in %s: %s", dir, strerror(errno));
        *err = msg;
        return FERRY_ERROR;
    }
    return FERRY_OK;
}
