/* Socket address helpers (include/ibrain/net.h). */
#include "ibrain/net.h"

#include <arpa/inet.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

int ib_parse_hostport(const char *s, struct sockaddr_in *out)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (colon == NULL || (size_t)(colon - s) >= sizeof(host))
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port < 0 || port > 65535)
        return -1;
    memset(out, 0, sizeof(*out));
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    const char *ip = host[0] == '\0' ? "0.0.0.0" : strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
    return inet_pton(AF_INET, ip, &out->sin_addr) == 1 ? 0 : -1;
}

int ib_write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return -1;
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "%u\n", port);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

void ib_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int ib_http_get_local(unsigned port, const char *path, int timeout_ms, int *status, char *body, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char req[512], resp[8192];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", path);
    size_t len = 0;
    int rc = -1;
    if (n > 0 && (size_t)n < sizeof(req) && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        write(fd, req, (size_t)n) == n) {
        ssize_t got;
        while (len + 1 < sizeof(resp) && (got = read(fd, resp + len, sizeof(resp) - 1 - len)) > 0)
            len += (size_t)got;
        resp[len] = '\0';
        int code;
        char *sep = strstr(resp, "\r\n\r\n");
        if (sscanf(resp, "HTTP/1.%*d %d", &code) == 1 && sep != NULL) {
            *status = code;
            if (body != NULL && cap > 0)
                snprintf(body, cap, "%s", sep + 4);
            rc = 0;
        }
    }
    close(fd);
    return rc;
}

int ib_exe_sibling(const char *name, char *out, size_t cap)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    int m = snprintf(out, cap, "%s/%s", dirname(self), name);
    return m > 0 && (size_t)m < cap ? 0 : -1;
}
