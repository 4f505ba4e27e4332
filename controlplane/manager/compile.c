/* The compile stage of the workload manager: the weights exist, can be read, and are
 * fingerprinted (include/ibrain/manager.h). */
#include "ibrain/manager.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static int hash_file(const char *path, XXH3_state_t *st, ib_weights_info_t *out, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "weights file %s is not readable: %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16;
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (;;) {
        ssize_t n = read(fd, buf, cap);
        if (n < 0) {
            snprintf(err, errlen, "weights file %s: read failed: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        XXH3_128bits_update(st, buf, (size_t)n);
        out->bytes += (uint64_t)n;
    }
    free(buf);
    close(fd);
    out->files++;
    return 0;
}

static int walk(const char *path, XXH3_state_t *st, ib_weights_info_t *out, int depth, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        snprintf(err, errlen, "weights path %s: %s", path, strerror(errno));
        return -1;
    }
    if (S_ISREG(sb.st_mode))
        return hash_file(path, st, out, err, errlen);
    if (!S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "weights path %s is neither a file nor a directory", path);
        return -1;
    }
    if (depth > 16) {
        snprintf(err, errlen, "weights path %s is nested too deeply", path);
        return -1;
    }
    struct dirent **names;
    int n = scandir(path, &names, NULL, alphasort);
    if (n < 0) {
        snprintf(err, errlen, "weights directory %s is not readable: %s", path, strerror(errno));
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        if (rc == 0 && strcmp(name, ".") != 0 && strcmp(name, "..") != 0) {
            char child[4096];
            if ((size_t)snprintf(child, sizeof(child), "%s/%s", path, name) >= sizeof(child)) {
                snprintf(err, errlen, "weights path under %s is too long", path);
                rc = -1;
            } else {
                XXH3_128bits_update(st, name, strlen(name) + 1); /* names are part of the fingerprint */
                rc = walk(child, st, out, depth + 1, err, errlen);
            }
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int ib_weights_compile(const char *path, ib_weights_info_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (path == NULL || path[0] == '\0') {
        snprintf(err, errlen, "no weights path given");
        return -1;
    }
    XXH3_state_t *st = XXH3_createState();
    if (st == NULL || XXH3_128bits_reset(st) != XXH_OK) {
        XXH3_freeState(st);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = walk(path, st, out, 0, err, errlen);
    if (rc == 0) {
        XXH128_hash_t h = XXH3_128bits_digest(st);
        snprintf(out->checksum, sizeof(out->checksum), "%016llx%016llx", (unsigned long long)h.high64,
                 (unsigned long long)h.low64);
    }
    XXH3_freeState(st);
    return rc;
}
