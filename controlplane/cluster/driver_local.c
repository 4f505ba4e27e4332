/* The local driver: one ib-manager child process per replica (include/ibrain/cluster.h). */
#include "ibrain/cluster.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ibrain/clock.h"
#include "ibrain/http1.h"
#include "ibrain/net.h"
#include "ibrain/ondemand_c.h"

#define MAX_CHILDREN (IB_MAX_WORKLOADS * IB_MAX_WORKLOAD_REPLICAS)

typedef struct child {
    char id[80];
    ib_workload_spec_t spec;
    uint32_t index;
    pid_t pid;
    int stopping;
    uint32_t restarts;
    uint32_t backoff_ms;
    uint64_t restart_at_ns;
    char last_exit[96];
    int adopted; /* not our child: liveness by kill(pid, 0), no waitpid */
} child_t;

typedef struct local {
    ib_driver_t ops;
    ib_cluster_config_t cfg;
    child_t *children;
    uint32_t n;
    ib_json_parser_t *json;
} local_t;

static child_t *find(local_t *l, const char *id)
{
    for (uint32_t i = 0; i < l->n; i++)
        if (strcmp(l->children[i].id, id) == 0)
            return &l->children[i];
    return NULL;
}

static int spawn(local_t *l, child_t *c)
{
    char port_file[512], log[512], state[512];
    snprintf(port_file, sizeof(port_file), "%s/%s.port", l->cfg.state_dir, c->id);
    snprintf(log, sizeof(log), "%s/%s.manager.log", l->cfg.state_dir, c->id);
    snprintf(state, sizeof(state), "%s", l->cfg.state_dir);
    unlink(port_file);
    char engine[1024], err[160];
    if (ib_engine_command(&c->spec, l->cfg.engine, engine, sizeof(engine), err, sizeof(err)) != 0) {
        fprintf(stderr, "ib-clusterd: %s: %s\n", c->id, err); /* validated at create: not reached */
        errno = EINVAL;
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        const char *argv[24];
        int a = 0;
        argv[a++] = l->cfg.manager;
        argv[a++] = "--listen";
        argv[a++] = "127.0.0.1:0";
        argv[a++] = "--port-file";
        argv[a++] = port_file;
        argv[a++] = "--workload";
        argv[a++] = c->spec.id;
        argv[a++] = "--replica";
        argv[a++] = c->id;
        argv[a++] = "--model";
        argv[a++] = c->spec.model;
        argv[a++] = "--weights";
        argv[a++] = c->spec.weights;
        argv[a++] = "--state-dir";
        argv[a++] = state;
        argv[a++] = "--engine-cmd";
        argv[a++] = engine;
        argv[a] = NULL;
        execv(l->cfg.manager, (char *const *)argv);
        fprintf(stderr, "ib-clusterd: cannot run %s: %s\n", l->cfg.manager, strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    c->pid = pid;
    c->adopted = 0;
    return 0;
}

static int local_validate(void *self, const ib_workload_spec_t *w, char *err, size_t errlen)
{
    local_t *l = self;
    struct stat st;
    if (stat(w->weights, &st) != 0) {
        snprintf(err, errlen, "weights: %s: %s", w->weights, strerror(errno));
        return -1;
    }
    if (w->tokenizer[0] != '\0' && stat(w->tokenizer, &st) != 0) {
        snprintf(err, errlen, "tokenizer: %s: %s", w->tokenizer, strerror(errno));
        return -1;
    }
    char cmd[1024];
    return ib_engine_command(w, l->cfg.engine, cmd, sizeof(cmd), err, errlen);
}

static int local_start(void *self, const ib_workload_spec_t *w, uint32_t index, char *err, size_t errlen)
{
    local_t *l = self;
    if (l->n == MAX_CHILDREN) {
        snprintf(err, errlen, "too many replicas");
        return -1;
    }
    child_t *c = &l->children[l->n];
    memset(c, 0, sizeof(*c));
    snprintf(c->id, sizeof(c->id), "%s-g%llu-r%u", w->id, (unsigned long long)w->generation, index);
    c->spec = *w;
    c->index = index;
    if (spawn(l, c) != 0) {
        snprintf(err, errlen, "fork failed: %s", strerror(errno));
        return -1;
    }
    l->n++;
    return 0;
}

/* The manager's own pid from its /status, or 0 when it does not answer. */
static int get_status(const char *port_file, char *body, size_t cap);

static pid_t running_manager(local_t *l, const char *id)
{
    char port_file[512], body[4096 + IB_JSON_PADDING];
    snprintf(port_file, sizeof(port_file), "%s/%s.port", l->cfg.state_dir, id);
    if (get_status(port_file, body, 4096) != 0)
        return 0;
    int64_t pid = 0;
    ib_json_pointer_int(l->json, body, strlen(body), "/manager_pid", &pid);
    return pid > 1 && kill((pid_t)pid, 0) == 0 ? (pid_t)pid : 0;
}

static int local_adopt(void *self, const ib_workload_spec_t *w, uint32_t index, char *err, size_t errlen)
{
    local_t *l = self;
    char id[80];
    snprintf(id, sizeof(id), "%s-g%llu-r%u", w->id, (unsigned long long)w->generation, index);
    pid_t pid = running_manager(l, id);
    if (pid == 0)
        return local_start(self, w, index, err, errlen);
    if (l->n == MAX_CHILDREN) {
        snprintf(err, errlen, "too many replicas");
        return -1;
    }
    child_t *c = &l->children[l->n++];
    memset(c, 0, sizeof(*c));
    snprintf(c->id, sizeof(c->id), "%s", id);
    c->spec = *w;
    c->index = index;
    c->pid = pid;
    c->adopted = 1;
    fprintf(stderr, "ib-clusterd: adopted the manager of %s (pid %d)\n", id, (int)pid);
    return 1;
}

static void local_stop(void *self, const char *id)
{
    local_t *l = self;
    child_t *c = find(l, id);
    if (c == NULL)
        return;
    c->stopping = 1;
    if (c->pid > 0)
        kill(c->pid, SIGTERM); /* the manager drains its engine, then exits */
}

/* GET /status of the manager whose port file is <port_file>; the body into <body>. */
static int get_status(const char *port_file, char *body, size_t cap)
{
    FILE *f = fopen(port_file, "r");
    unsigned port = 0;
    if (f == NULL)
        return -1;
    int ok = fscanf(f, "%u", &port) == 1;
    fclose(f);
    if (!ok || port == 0 || port > 65535)
        return -1;
    char hp[32];
    ib_buf_t resp = {0};
    snprintf(hp, sizeof(hp), "127.0.0.1:%u", port);
    int status = ib_http_get(hp, "/status", 1000, &resp);
    if (status >= 0 && cap > 0)
        snprintf(body, cap, "%s", resp.ptr);
    ib_buf_free(&resp);
    return status == 200 ? 0 : -1;
}

static void copy_span(char *dst, size_t cap, ib_span_t s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    memcpy(dst, s.ptr, n);
    dst[n] = '\0';
}

static void local_status(void *self, const char *id, ib_replica_status_t *out)
{
    local_t *l = self;
    memset(out, 0, sizeof(*out));
    snprintf(out->id, sizeof(out->id), "%s", id);
    child_t *c = find(l, id);
    if (c == NULL) {
        out->phase = IB_REPLICA_GONE;
        return;
    }
    out->generation = c->spec.generation;
    out->restarts = c->restarts;
    if (c->pid <= 0) {
        out->phase = c->stopping ? IB_REPLICA_STOPPED : IB_REPLICA_RESTARTING;
        snprintf(out->reason, sizeof(out->reason), "manager %s", c->last_exit);
        return;
    }
    char port_file[512], body[4096 + IB_JSON_PADDING];
    snprintf(port_file, sizeof(port_file), "%s/%s.port", l->cfg.state_dir, c->id);
    if (get_status(port_file, body, 4096) != 0) {
        out->phase = IB_REPLICA_PENDING;
        return;
    }
    size_t len = strlen(body);
    ib_span_t s;
    int64_t restarts = 0;
    if (ib_json_pointer_string(l->json, body, len, "/phase", &s) == 0)
        out->phase = ib_replica_phase_parse(s.ptr, s.len);
    if (ib_json_pointer_string(l->json, body, len, "/reason", &s) == 0)
        copy_span(out->reason, sizeof(out->reason), s);
    if (ib_json_pointer_string(l->json, body, len, "/engine_address", &s) == 0)
        copy_span(out->address, sizeof(out->address), s);
    if (ib_json_pointer_string(l->json, body, len, "/kv_events", &s) == 0)
        copy_span(out->kv_events, sizeof(out->kv_events), s);
    if (ib_json_pointer_string(l->json, body, len, "/kv_events_replay", &s) == 0)
        copy_span(out->kv_events_replay, sizeof(out->kv_events_replay), s);
    if (ib_json_pointer_int(l->json, body, len, "/restarts", &restarts) == 0)
        out->restarts += (uint32_t)restarts;
    if (out->phase != IB_REPLICA_READY)
        out->address[0] = '\0';
    /* announced for a workload with events only (a custom command may use the placeholders
     * without), and a replay only beside its events endpoint */
    if (out->phase != IB_REPLICA_READY || !c->spec.kv_events || out->kv_events[0] == '\0')
        out->kv_events[0] = out->kv_events_replay[0] = '\0';
}

static void local_tick(void *self)
{
    local_t *l = self;
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        for (uint32_t i = 0; i < l->n; i++) {
            child_t *c = &l->children[i];
            if (c->pid != pid)
                continue;
            c->pid = 0;
            if (WIFEXITED(status))
                snprintf(c->last_exit, sizeof(c->last_exit), "exited with status %d", WEXITSTATUS(status));
            else
                snprintf(c->last_exit, sizeof(c->last_exit), "killed by signal %d", WTERMSIG(status));
            if (!c->stopping) { /* crashed: restart with back-off */
                c->backoff_ms = c->backoff_ms ? (c->backoff_ms * 2 > 10000 ? 10000 : c->backoff_ms * 2) : 500;
                c->restart_at_ns = ib_now_ns() + (uint64_t)c->backoff_ms * 1000000ull;
                c->restarts++;
                fprintf(stderr, "ib-clusterd: manager of %s %s; restart in %u ms\n", c->id, c->last_exit,
                        c->backoff_ms);
            }
        }
    for (uint32_t i = 0; i < l->n; i++) { /* adopted managers are not our children */
        child_t *c = &l->children[i];
        if (c->adopted && c->pid > 0 && kill(c->pid, 0) != 0) {
            c->pid = 0;
            c->adopted = 0;
            snprintf(c->last_exit, sizeof(c->last_exit), "(adopted) exited");
            if (!c->stopping) {
                c->backoff_ms = 500;
                c->restart_at_ns = ib_now_ns() + 500000000ull;
                c->restarts++;
            }
        }
    }
    uint64_t now = ib_now_ns();
    for (uint32_t i = 0; i < l->n;) {
        child_t *c = &l->children[i];
        if (c->stopping && c->pid == 0) { /* stopped: forget it */
            l->children[i] = l->children[--l->n];
            continue;
        }
        if (!c->stopping && c->pid == 0 && now >= c->restart_at_ns && spawn(l, c) != 0)
            c->restart_at_ns = now + 1000000000ull;
        i++;
    }
}

static void local_destroy(ib_driver_t *d)
{
    if (d == NULL)
        return;
    local_t *l = d->self;
    free(l->children);
    ib_json_parser_free(l->json);
    free(l);
}

ib_driver_t *ib_driver_local_new(const ib_cluster_config_t *cfg)
{
    local_t *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    l->cfg = *cfg;
    l->children = calloc(MAX_CHILDREN, sizeof(*l->children));
    l->json = ib_json_parser_new(1 << 16);
    if (l->children == NULL || l->json == NULL) {
        free(l->children);
        ib_json_parser_free(l->json);
        free(l);
        return NULL;
    }
    l->ops = (ib_driver_t){
        .self = l,
        .name = "local",
        .validate = local_validate,
        .start = local_start,
        .adopt = local_adopt,
        .stop = local_stop,
        .status = local_status,
        .tick = local_tick,
        .destroy = local_destroy,
    };
    return &l->ops;
}
