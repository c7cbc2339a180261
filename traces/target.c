/* Where the trace library may put a file it writes (a recording, a recovered copy): never over a
 * device, FIFO, socket or directory, and over an existing regular file only when the caller asks.
 * Files are written under a temporary name and published here; without REPLACE the publication
 * cannot replace anything, even a file that appears meanwhile (renameat2 RENAME_NOREPLACE, or
 * link + unlink where the file system lacks it). Depends on libc. */
#include "trace_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *kind_of(mode_t m)
{
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISDIR(m)) return "a directory";
    return "not a regular file";
}

enum kvs_status kvs_trace_target_check(const char *path, bool replace, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return KVS_OK;
        kvs_seterr(err, errlen, "%s: %s", path, strerror(errno));
        return KVS_ERR_IO;
    }
    /* a symbolic link is judged by what it points to (a link to /dev/null is a device) */
    struct stat to;
    if (S_ISLNK(st.st_mode) && stat(path, &to) == 0) st = to;
    if (!S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
        kvs_seterr(err, errlen, "%s is %s, not a regular file: never replaced", path, kind_of(st.st_mode));
        return KVS_ERR_ARG;
    }
    if (!replace) {
        kvs_seterr(err, errlen, "%s already exists", path);
        return KVS_ERR_STATE;
    }
    return KVS_OK;
}

enum kvs_status kvt_publish(const char *tmp, const char *path, bool replace, char *err, size_t errlen)
{
    enum kvs_status st = kvs_trace_target_check(path, replace, err, errlen);
    if (st != KVS_OK) return st;
    if (replace) {
        if (rename(tmp, path) == 0) return KVS_OK;
        kvs_seterr(err, errlen, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        return KVS_ERR_IO;
    }
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0) return KVS_OK;
    int e = errno;
    if (e == EINVAL || e == ENOSYS || e == ENOTSUP) {
        /* no RENAME_NOREPLACE here: link() refuses an existing name just as atomically */
        if (link(tmp, path) == 0) {
            unlink(tmp);
            return KVS_OK;
        }
        e = errno;
    }
    if (e == EEXIST) {
        kvs_seterr(err, errlen, "%s already exists (it appeared while %s was written)", path, tmp);
        return KVS_ERR_STATE;
    }
    kvs_seterr(err, errlen, "%s: cannot rename to %s: %s", tmp, path, strerror(e));
    return KVS_ERR_IO;
}
