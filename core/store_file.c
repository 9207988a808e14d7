/* store_file.c - the store's file on disk, checked before SQLite opens
 * it: missing parents created 0700, a missing file created 0600, a file
 * that is not a regular writable one refused, a wide mode narrowed. */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Create the missing directories above path (mkdir -p of its dirname). */
int store_make_parents(const char *path, const char **err)
{
    char *dir = strdup(path);
    if (dir == NULL) {
        return store_fail(err, "store %s: out of memory", path);
    }
    char *slash = strrchr(dir, '/');
    if (slash == NULL) {
        strcpy(dir, ".");
    } else if (slash == dir) {
        dir[1] = '\0';
    } else {
        *slash = '\0';
        for (char *p = dir + 1; ; p++) {
            if (*p != '/' && *p != '\0') {
                continue;
            }
            char was = *p;
            *p = '\0';
            if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
                int e = errno;
                store_fail(err, "store %s: cannot create directory %s: %s", path, dir, strerror(e));
                free(dir);
                return FERRY_ERROR;
            }
            *p = was;
            if (was == '\0') {
                break;
            }
        }
    }
    struct stat st;
    int rc = FERRY_OK;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        rc = store_fail(err, "store %s: %s is not a directory", path, dir);
    } else if (access(dir, W_OK | X_OK) != 0) {
        int e = errno;
        rc = store_fail(err, "store %s: directory %s is read-only (%s); the store writes its WAL "
                        "files next to the database", path, dir, strerror(e));
    }
    free(dir);
    return rc;
}

/* Make sure path is a regular, writable file, created 0600 when missing. */
int store_prepare_file(const char *path, const char **err)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno != ENOENT) {
            int e = errno;
            return store_fail(err, "store %s: %s", path, strerror(e));
        }
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            int e = errno;
            return store_fail(err, "store %s: cannot create the file: %s", path, strerror(e));
        }
        close(fd);
        return FERRY_OK;
    }
    if (!S_ISREG(st.st_mode)) {
        return store_fail(err, "store %s: not a regular file", path);
    }
    if (access(path, R_OK | W_OK) != 0) {
        int e = errno;
        return store_fail(err, "store %s: file is read-only (%s)", path, strerror(e));
    }
    return FERRY_OK;
}

/* The store holds proxy credentials: narrow a wider mode to owner-only,
 * once the file has proved to be our store. */
void store_narrow_mode(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && (st.st_mode & 077) != 0) {
        (void)chmod(path, st.st_mode & 0700);
    }
}
