/* The workload manager's life cycle and its status server (include/ibrain/manager.h).
 *
 * The main thread runs the stages on a signalfd (SIGTERM, SIGINT, SIGCHLD) and a 500 ms
 * timerfd; a second thread serves GET /status, /health and /metrics, one short request per
 * connection, from a copy of the state taken under a mutex. */
#include "ibrain/manager.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ibrain/admin_http.h"
#include "ibrain/buf.h"
#include "ibrain/clock.h"
#include "ibrain/http1.h"
#include "ibrain/json_write.h"
#include "ibrain/net.h"
#include "ibrain/phase.h"

#define HEALTH_EVERY_MS 500 /* a ready engine's health check */
#define TICK_MS 50          /* the loop's timer: a starting engine is checked this often */
#define UNHEALTHY_LIMIT 3

/* The manager's phases are a replica's (include/ibrain/phase.h), named by its table. */
static const ib_replica_phase_t as_replica[IB_MGR__COUNT] = {
    [IB_MGR_COMPILING] = IB_REPLICA_COMPILING,   [IB_MGR_STARTING] = IB_REPLICA_STARTING,
    [IB_MGR_READY] = IB_REPLICA_READY,           [IB_MGR_RESTARTING] = IB_REPLICA_RESTARTING,
    [IB_MGR_FAILED] = IB_REPLICA_FAILED,         [IB_MGR_DRAINING] = IB_REPLICA_DRAINING,
    [IB_MGR_STOPPED] = IB_REPLICA_STOPPED,
};

const char *ib_mgr_phase_name(ib_mgr_phase_t p)
{
    return ib_replica_phase_name(p < IB_MGR__COUNT ? as_replica[p] : IB_REPLICA_UNKNOWN);
}

typedef struct mgr {
    ib_manager_config_t cfg;
    pthread_mutex_t lock; /* guards the fields below it that the status thread reads */
    ib_mgr_phase_t phase;
    char reason[256];
    ib_weights_info_t weights;
    int weights_ok;
    uint16_t engine_port;
    uint16_t kv_port, kv_replay_port; /* the engine's KV events ports, 0 when its command has none */
    pid_t engine_pid;
    uint64_t restarts;
    uint64_t phase_since_ms;
    uint64_t health_failures_total;
    /* main thread only */
    uint32_t backoff_ms;
    uint64_t restart_at_ns, started_ns, drain_deadline_ns, next_health_ns;
    int unhealthy;
    uint16_t port;
} mgr_t;

static void set_phase(mgr_t *m, ib_mgr_phase_t p, const char *reason)
{
    pthread_mutex_lock(&m->lock);
    if (m->phase != p || reason != NULL) {
        m->phase = p;
        m->phase_since_ms = ib_wall_ms();
        snprintf(m->reason, sizeof(m->reason), "%s", reason ? reason : "");
    }
    pthread_mutex_unlock(&m->lock);
    fprintf(stderr, "ib-manager: %s: %s%s%s\n", m->cfg.replica, ib_mgr_phase_name(p), reason ? ": " : "",
            reason ? reason : "");
}

/* ---- the engine process ---- */

/* Fills each out[i] that is 0 with a free port, all different: the probe sockets stay
 * bound until every port is chosen. Free on every interface, where the KV events
 * sockets bind. 0, or -1 when the system gave none. */
static int free_ports(uint16_t out[3])
{
    int fds[3] = {-1, -1, -1}, rc = 0;
    for (int i = 0; i < 3; i++) {
        if (out[i] != 0)
            continue;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
        socklen_t len = sizeof(sa);
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
            getsockname(fds[i], (struct sockaddr *)&sa, &len) != 0)
            rc = -1;
        else
            out[i] = ntohs(sa.sin_port);
    }
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return rc;
}

/* Splits the engine command on spaces and substitutes the placeholders. */
static int build_argv(const mgr_t *m, char *buf, size_t cap, char **argv, int max)
{
    char port[8], kv[8], replay[8];
    snprintf(port, sizeof(port), "%u", m->engine_port);
    snprintf(kv, sizeof(kv), "%u", m->kv_port);
    snprintf(replay, sizeof(replay), "%u", m->kv_replay_port);
    const char *from[] = {"{port}", "{model}", "{weights}", "{replica}", "{host}", "{kv_port}", "{kv_replay_port}"};
    const char *to[] = {port, m->cfg.model ? m->cfg.model : "", m->cfg.weights ? m->cfg.weights : "",
                        m->cfg.replica ? m->cfg.replica : "", m->cfg.engine_host ? m->cfg.engine_host : "127.0.0.1",
                        kv, replay};
    enum { NP = sizeof(from) / sizeof(from[0]) };
    size_t o = 0;
    for (const char *p = m->cfg.engine_cmd; *p;) {
        int k;
        for (k = 0; k < NP; k++)
            if (strncmp(p, from[k], strlen(from[k])) == 0)
                break;
        const char *piece = k < NP ? to[k] : p;
        size_t n = k < NP ? strlen(to[k]) : 1;
        if (o + n + 1 >= cap)
            return -1;
        memcpy(buf + o, piece, n);
        o += n;
        p += k < NP ? strlen(from[k]) : 1;
    }
    buf[o] = '\0';
    int argc = 0;
    for (char *save = NULL, *tok = strtok_r(buf, " \t", &save); tok != NULL; tok = strtok_r(NULL, " \t", &save)) {
        if (argc == max - 1)
            return -1;
        argv[argc++] = tok;
    }
    argv[argc] = NULL;
    return argc;
}

static int start_engine(mgr_t *m)
{
    /* every start takes fresh free ports (a port of the last engine may still be held), and
     * /status announces them: routers follow */
    int want_kv = strstr(m->cfg.engine_cmd, "{kv_port}") != NULL;
    int want_replay = strstr(m->cfg.engine_cmd, "{kv_replay_port}") != NULL;
    /* a port not wanted is marked taken (1) for free_ports, then 0 again */
    uint16_t ports[3] = {(uint16_t)m->cfg.engine_port, want_kv ? (uint16_t)m->cfg.kv_port : 1,
                         want_replay ? (uint16_t)m->cfg.kv_replay_port : 1};
    int ok = free_ports(ports) == 0;
    pthread_mutex_lock(&m->lock);
    m->engine_port = ports[0];
    m->kv_port = want_kv ? ports[1] : 0;
    m->kv_replay_port = want_replay ? ports[2] : 0;
    pthread_mutex_unlock(&m->lock);
    char buf[4096];
    char *argv[64];
    if (!ok) {
        set_phase(m, IB_MGR_FAILED, "no free port for the engine");
        return -1;
    }
    if (build_argv(m, buf, sizeof(buf), argv, 64) <= 0) {
        set_phase(m, IB_MGR_FAILED, "the engine command is empty or too long");
        return -1;
    }
    char logpath[4096];
    snprintf(logpath, sizeof(logpath), "%s/engine-%s.log", m->cfg.state_dir, m->cfg.replica);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        set_phase(m, IB_MGR_RESTARTING, "fork failed");
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        /* A manager that dies (even by SIGKILL) takes its engine with it: the engine gets
         * SIGTERM and drains, and the restarted manager starts a fresh one. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(argv[0], argv);
        fprintf(stderr, "ib-manager: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    pthread_mutex_lock(&m->lock);
    m->engine_pid = pid;
    pthread_mutex_unlock(&m->lock);
    m->started_ns = ib_now_ns();
    m->unhealthy = 0;
    char why[96];
    snprintf(why, sizeof(why), "engine pid %d on 127.0.0.1:%u", (int)pid, m->engine_port);
    set_phase(m, IB_MGR_STARTING, why);
    return 0;
}

/* GET /health on the engine: 1 when it answers 200 within a second. */
static int engine_healthy(const mgr_t *m)
{
    char hp[32];
    ib_buf_t body = {0};
    snprintf(hp, sizeof(hp), "127.0.0.1:%u", (unsigned)m->engine_port);
    int status = ib_http_get(hp, "/health", 1000, &body);
    ib_buf_free(&body);
    return status == 200;
}

static void schedule_restart(mgr_t *m, const char *why)
{
    if (m->engine_pid > 0) {
        kill(-m->engine_pid, SIGKILL);
        pthread_mutex_lock(&m->lock);
        m->engine_pid = 0;
        pthread_mutex_unlock(&m->lock);
    }
    m->backoff_ms = m->backoff_ms ? (m->backoff_ms * 2 > 10000 ? 10000 : m->backoff_ms * 2) : 500;
    m->restart_at_ns = ib_now_ns() + (uint64_t)m->backoff_ms * 1000000ull;
    pthread_mutex_lock(&m->lock);
    m->restarts++;
    pthread_mutex_unlock(&m->lock);
    char reason[200];
    snprintf(reason, sizeof(reason), "%s; restart in %u ms", why, m->backoff_ms);
    set_phase(m, IB_MGR_RESTARTING, reason);
}

/* ---- the status server ---- */

static void render_status(mgr_t *m, ib_buf_t *b)
{
    pthread_mutex_lock(&m->lock);
    char head[512];
    int n = snprintf(head, sizeof(head), "{\"phase\":\"%s\",\"ready\":%s,\"since_unix_ms\":%llu,\"workload\":",
                     ib_mgr_phase_name(m->phase), m->phase == IB_MGR_READY ? "true" : "false",
                     (unsigned long long)m->phase_since_ms);
    ib_buf_append(b, head, (size_t)n);
    ib_json_str(b, m->cfg.workload);
    ib_buf_append(b, ",\"replica\":", 11);
    ib_json_str(b, m->cfg.replica);
    ib_buf_append(b, ",\"model\":", 9);
    ib_json_str(b, m->cfg.model);
    ib_buf_append(b, ",\"reason\":", 10);
    ib_json_str(b, m->reason);
    char addr[32] = "";
    if (m->engine_pid > 0)
        snprintf(addr, sizeof(addr), "127.0.0.1:%u", m->engine_port);
    ib_buf_append(b, ",\"engine_address\":", 18);
    ib_json_str(b, addr);
    /* the engine's KV events endpoints, where a router on this host connects */
    char ev[48] = "", rp[48] = "";
    if (m->engine_pid > 0 && m->kv_port)
        snprintf(ev, sizeof(ev), "tcp://127.0.0.1:%u", m->kv_port);
    if (m->engine_pid > 0 && m->kv_replay_port)
        snprintf(rp, sizeof(rp), "tcp://127.0.0.1:%u", m->kv_replay_port);
    ib_json_member_str(b, "kv_events", ev, 1);
    ib_json_member_str(b, "kv_events_replay", rp, 1);
    n = snprintf(head, sizeof(head), ",\"engine_pid\":%d,\"manager_pid\":%d,\"restarts\":%llu,\"weights\":",
                 (int)m->engine_pid, (int)getpid(), (unsigned long long)m->restarts);
    ib_buf_append(b, head, (size_t)n);
    if (m->weights_ok) {
        ib_buf_append(b, "{\"path\":", 8);
        ib_json_str(b, m->cfg.weights);
        n = snprintf(head, sizeof(head), ",\"bytes\":%llu,\"files\":%u,\"xxh3_128\":\"%s\"}}\n",
                     (unsigned long long)m->weights.bytes, m->weights.files, m->weights.checksum);
        ib_buf_append(b, head, (size_t)n);
    } else {
        ib_buf_append(b, "null}\n", 6);
    }
    pthread_mutex_unlock(&m->lock);
}

static void render_metrics(mgr_t *m, ib_buf_t *b)
{
    pthread_mutex_lock(&m->lock);
    ib_buf_printf(b, "# HELP ib_manager_phase 1 for the manager's current phase.\n"
                     "# TYPE ib_manager_phase gauge\n");
    for (int p = 0; p < IB_MGR__COUNT; p++)
        ib_buf_printf(b, "ib_manager_phase{phase=\"%s\"} %d\n", ib_mgr_phase_name((ib_mgr_phase_t)p), (int)m->phase == p);
    ib_buf_printf(b,
                  "# HELP ib_manager_engine_restarts_total Engine restarts after an exit or failed health checks.\n"
                  "# TYPE ib_manager_engine_restarts_total counter\nib_manager_engine_restarts_total %llu\n",
                  (unsigned long long)m->restarts);
    ib_buf_printf(b,
                  "# HELP ib_manager_health_failures_total Engine health checks that failed.\n"
                  "# TYPE ib_manager_health_failures_total counter\nib_manager_health_failures_total %llu\n",
                  (unsigned long long)m->health_failures_total);
    pthread_mutex_unlock(&m->lock);
}

static int on_status_request(void *arg, const char *path, ib_buf_t *body, const char **ctype)
{
    mgr_t *m = arg;
    if (strcmp(path, "/status") == 0) {
        render_status(m, body);
    } else if (strcmp(path, "/health") == 0) { /* liveness: the manager answers */
        ib_buf_append(body, "{\"status\":\"ok\"}\n", 16);
    } else if (strcmp(path, "/ready") == 0) { /* readiness: the engine serves and is not draining */
        pthread_mutex_lock(&m->lock);
        int ready = m->phase == IB_MGR_READY;
        pthread_mutex_unlock(&m->lock);
        ib_buf_printf(body, "{\"ready\":%s}\n", ready ? "true" : "false");
        return ready ? 200 : 503;
    } else if (strcmp(path, "/metrics") == 0) {
        *ctype = IB_PROM_CTYPE;
        render_metrics(m, body);
    } else {
        return 404;
    }
    return 200;
}

/* ---- the main loop ---- */

static void on_tick(mgr_t *m)
{
    uint64_t now = ib_now_ns();
    ib_mgr_phase_t phase = m->phase;
    if (phase == IB_MGR_RESTARTING && now >= m->restart_at_ns) {
        start_engine(m);
    } else if (phase == IB_MGR_STARTING) {
        if (engine_healthy(m)) {
            m->backoff_ms = 0;
            char why[96];
            snprintf(why, sizeof(why), "engine healthy on 127.0.0.1:%u", m->engine_port);
            set_phase(m, IB_MGR_READY, why);
        } else if (now - m->started_ns > (uint64_t)m->cfg.ready_timeout_ms * 1000000ull) {
            schedule_restart(m, "the engine did not become healthy in time");
        }
    } else if (phase == IB_MGR_READY && now >= m->next_health_ns) {
        m->next_health_ns = now + HEALTH_EVERY_MS * 1000000ull;
        if (engine_healthy(m)) {
            m->unhealthy = 0;
        } else {
            pthread_mutex_lock(&m->lock);
            m->health_failures_total++;
            pthread_mutex_unlock(&m->lock);
            if (++m->unhealthy >= UNHEALTHY_LIMIT)
                schedule_restart(m, "the engine failed 3 health checks in a row");
        }
    } else if (phase == IB_MGR_DRAINING && m->engine_pid > 0 && now > m->drain_deadline_ns) {
        kill(-m->engine_pid, SIGKILL); /* past the drain deadline */
    }
}

static void reap(mgr_t *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid != m->engine_pid)
            continue;
        pthread_mutex_lock(&m->lock);
        m->engine_pid = 0;
        pthread_mutex_unlock(&m->lock);
        char why[128];
        if (WIFEXITED(status))
            snprintf(why, sizeof(why), "the engine exited with status %d", WEXITSTATUS(status));
        else
            snprintf(why, sizeof(why), "the engine was killed by signal %d", WTERMSIG(status));
        if (m->phase == IB_MGR_DRAINING)
            set_phase(m, IB_MGR_STOPPED, why);
        else if (m->phase != IB_MGR_FAILED)
            schedule_restart(m, why);
    }
}

int ib_manager_run(const ib_manager_config_t *cfg)
{
    mgr_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return 1;
    m->cfg = *cfg;
    if (m->cfg.state_dir == NULL)
        m->cfg.state_dir = ".";
    if (m->cfg.ready_timeout_ms == 0)
        m->cfg.ready_timeout_ms = 60000;
    if (m->cfg.drain_timeout_ms == 0)
        m->cfg.drain_timeout_ms = 10000;
    if (m->cfg.replica == NULL)
        m->cfg.replica = "replica";
    pthread_mutex_init(&m->lock, NULL);
    m->phase_since_ms = ib_wall_ms();
    int rc = 1;
    ib_admin_t *admin = NULL;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &mask, NULL); /* before the status thread: it inherits the mask */
    signal(SIGPIPE, SIG_IGN);
    char aerr[160];
    admin = ib_admin_start(cfg->listen, on_status_request, m, aerr, sizeof(aerr));
    if (admin == NULL) {
        fprintf(stderr, "ib-manager: --listen: %s\n", aerr);
        goto out;
    }
    m->port = ib_admin_port(admin);
    if (cfg->port_file != NULL && ib_write_port_file(cfg->port_file, m->port) != 0) {
        fprintf(stderr, "ib-manager: cannot write %s\n", cfg->port_file);
        goto out;
    }
    fprintf(stderr, "ib-manager: %s (workload %s) status on %s (port %u)\n", m->cfg.replica,
            m->cfg.workload ? m->cfg.workload : "-", cfg->listen, m->port);

    /* compile */
    char err[256];
    set_phase(m, IB_MGR_COMPILING, NULL);
    ib_weights_info_t wi;
    if (ib_weights_compile(cfg->weights, &wi, err, sizeof(err)) != 0) {
        set_phase(m, IB_MGR_FAILED, err);
    } else {
        pthread_mutex_lock(&m->lock);
        m->weights = wi;
        m->weights_ok = 1;
        pthread_mutex_unlock(&m->lock);
        fprintf(stderr, "ib-manager: weights %s: %llu bytes in %u files, xxh3-128 %s\n", cfg->weights,
                (unsigned long long)wi.bytes, wi.files, wi.checksum);
        start_engine(m); /* execute */
    }

    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct itimerspec its = {{0, TICK_MS * 1000000L}, {0, TICK_MS * 1000000L}};
    timerfd_settime(tfd, 0, &its, NULL);
    for (;;) {
        struct pollfd p[2] = {{sfd, POLLIN, 0}, {tfd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents) {
            uint64_t x;
            (void)!read(tfd, &x, sizeof(x));
            on_tick(m);
        }
        if (p[0].revents) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof(si)) != sizeof(si))
                continue;
            if (si.ssi_signo == SIGCHLD) {
                reap(m);
            } else if (m->phase != IB_MGR_DRAINING) { /* drain: the engine finishes, then stops */
                m->drain_deadline_ns = ib_now_ns() + (uint64_t)m->cfg.drain_timeout_ms * 1000000ull;
                set_phase(m, IB_MGR_DRAINING, si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
                if (m->engine_pid > 0)
                    kill(-m->engine_pid, SIGTERM);
            }
        }
        if (m->phase == IB_MGR_STOPPED || (m->phase == IB_MGR_DRAINING && m->engine_pid == 0))
            break;
    }
    if (m->phase != IB_MGR_STOPPED)
        set_phase(m, IB_MGR_STOPPED, NULL);
    close(sfd);
    close(tfd);
    rc = 0;
out:
    ib_admin_stop(admin);
    pthread_mutex_destroy(&m->lock);
    free(m);
    return rc;
}
