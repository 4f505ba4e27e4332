/*
 * ibctl: the orchestrator's command-line client.
 *
 *   ibctl workload create|list|get|update|scale|delete|wait ...
 *   ibctl token create ...        (mint a JWT for the orchestrator: HS256 or RS256)
 *
 * Talks to ib-orchestrator's REST API (docs/api.md) over HTTP/1.1; tables by default,
 * the API's JSON with -o json. The token comes from --token, --token-file, IBCTL_TOKEN or
 * IBCTL_TOKEN_FILE; the server from --server or IBCTL_SERVER.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "ibrain/clock.h"
#include "ibrain/cluster.h"
#include "ibrain/http1.h"
#include "ibrain/json_write.h"
#include "ibrain/jwt.h"
#include "ibrain/net.h"
#include "ibrain/phase.h"
#include "ibrain/ondemand_c.h"

#define DEFAULT_SERVER "http://127.0.0.1:8081"
#define TIMEOUT_MS 15000

typedef struct cli {
    char hostport[128];
    const char *server;
    char auth[8192];       /* "Authorization: Bearer ...\r\n" or "" */
    int json_out;
    ib_json_parser_t *json;
} cli_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ibctl [--server URL] [--token T | --token-file F] [-o table|json] COMMAND\n"
            "\n"
            "  workload create ID --model M --weights PATH [fields] [--wait] [--timeout S]\n"
            "  workload create -f SPEC.json [--wait]\n"
            "  workload list\n"
            "  workload get ID\n"
            "  workload update ID [fields] [--wait]     (anything but --replicas: a rolling update)\n"
            "  workload scale ID N [--wait]\n"
            "  workload delete ID\n"
            "  workload wait ID [--timeout S]           (until every replica of the current generation\n"
            "                                            is ready and older ones are gone)\n"
            "  token create (--secret-file F | --key PRIVATE.pem) [--sub S] [--scope \"workloads:read workloads:write\"]\n"
            "               [--ttl-s N] [--nbf-s N] [--iss ISS] [--aud AUD]\n"
            "\n"
            "fields: --replicas N --engine mock|vllm|sglang|custom --engine-args 'ARGS' --engine-cmd 'CMD'\n"
            "        --version V --template chatml|qwen3|llama3|plain --tokenizer PATH --block-size N\n"
            "        --context-length N --policy affinity|least-load|round-robin|consistent-hash\n"
            "        --cpu Q --memory Q --gpus N   (per replica, kubernetes driver: \"4\", \"16Gi\")\n"
            "        --kv-events on|off   (the engines publish KV-cache events; routers route on them)\n"
            "\n"
            "environment: IBCTL_SERVER (default " DEFAULT_SERVER "), IBCTL_TOKEN, IBCTL_TOKEN_FILE\n");
}

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
        s[--n] = '\0';
}

/* ---- HTTP ---- */

typedef struct resp {
    int status;
    char *body;
    size_t len;
} resp_t;

static int request(cli_t *c, const char *method, const char *path, const char *body, size_t blen, resp_t *r)
{
    ib_buf_t b = {0};
    r->status = ib_http_request(c->hostport, method, path, c->auth, body, blen, TIMEOUT_MS, &b);
    r->body = b.ptr; /* free()d by the caller */
    r->len = b.len;
    if (r->status < 0) {
        ib_buf_free(&b);
        r->body = NULL;
        fprintf(stderr, "ibctl: cannot reach the orchestrator at %s (is it running? --server or IBCTL_SERVER)\n",
                c->server);
        return -1;
    }
    return 0;
}

static void str_at(cli_t *c, const resp_t *r, const char *ptr, char *out, size_t cap)
{
    ib_span_t s;
    out[0] = '\0';
    if (ib_json_pointer_string(c->json, r->body, r->len, ptr, &s) == 0)
        snprintf(out, cap, "%.*s", (int)s.len, s.ptr);
}

static long long int_at(cli_t *c, const resp_t *r, const char *ptr)
{
    int64_t v = 0;
    ib_json_pointer_int(c->json, r->body, r->len, ptr, &v);
    return (long long)v;
}

static int bool_at(cli_t *c, const resp_t *r, const char *ptr)
{
    int v = 0;
    ib_json_pointer_bool(c->json, r->body, r->len, ptr, &v);
    return v;
}

/* Prints an API error ("ibctl: 400 weights: ... [field weights]"). Returns 1. */
static int api_error(cli_t *c, const resp_t *r)
{
    char msg[512], param[64];
    str_at(c, r, "/error/message", msg, sizeof(msg));
    str_at(c, r, "/error/param", param, sizeof(param));
    fprintf(stderr, "ibctl: %d %s%s%s%s\n", r->status, msg[0] ? msg : "(no error message)", param[0] ? " [field " : "",
            param, param[0] ? "]" : "");
    if (r->status == 401 && strstr(c->auth, "Bearer") == NULL)
        fprintf(stderr, "ibctl: no token given: --token, --token-file, IBCTL_TOKEN or IBCTL_TOKEN_FILE\n");
    return 1;
}

/* ---- output ---- */

static void print_workload_row(cli_t *c, const resp_t *r, const char *base)
{
    char p[160], id[64], model[128], version[64], phase[24], engine[24];
#define S(field, out) (snprintf(p, sizeof(p), "%s/" field, base), str_at(c, r, p, out, sizeof(out)))
#define I(field) (snprintf(p, sizeof(p), "%s/" field, base), int_at(c, r, p))
    S("id", id);
    S("model", model);
    S("version", version);
    S("status/phase", phase);
    S("engine", engine);
    printf("%-24s %-24s %-10s %5lld %5lld/%-5lld %-12s %s\n", id, model, version[0] ? version : "-", I("generation"),
           I("status/ready_replicas"), I("replicas"), phase, engine);
#undef S
#undef I
}

static void print_header(void)
{
    printf("%-24s %-24s %-10s %5s %11s %-12s %s\n", "ID", "MODEL", "VERSION", "GEN", "READY", "PHASE", "ENGINE");
}

static void print_workload(cli_t *c, const resp_t *r)
{
    if (c->json_out) {
        fwrite(r->body, 1, r->len, stdout);
        return;
    }
    print_header();
    print_workload_row(c, r, "");
    char msg[400];
    str_at(c, r, "/status/message", msg, sizeof(msg));
    if (msg[0])
        printf("  %s\n", msg);
    printf("\n  %-32s %5s %-11s %-21s %8s  %s\n", "REPLICA", "GEN", "PHASE", "ADDRESS", "RESTARTS", "NOTE");
    for (int i = 0; i < 1024; i++) {
        char p[96], id[96], phase[24], addr[64], reason[300];
        snprintf(p, sizeof(p), "/status/replicas/%d/id", i);
        ib_span_t s;
        if (ib_json_pointer_string(c->json, r->body, r->len, p, &s) != 0)
            break;
        snprintf(id, sizeof(id), "%.*s", (int)s.len, s.ptr);
        snprintf(p, sizeof(p), "/status/replicas/%d/phase", i);
        str_at(c, r, p, phase, sizeof(phase));
        snprintf(p, sizeof(p), "/status/replicas/%d/address", i);
        str_at(c, r, p, addr, sizeof(addr));
        snprintf(p, sizeof(p), "/status/replicas/%d/reason", i);
        str_at(c, r, p, reason, sizeof(reason));
        snprintf(p, sizeof(p), "/status/replicas/%d/generation", i);
        long long gen = int_at(c, r, p);
        snprintf(p, sizeof(p), "/status/replicas/%d/restarts", i);
        long long restarts = int_at(c, r, p);
        snprintf(p, sizeof(p), "/status/replicas/%d/draining", i);
        int draining = bool_at(c, r, p);
        snprintf(p, sizeof(p), "/status/replicas/%d/retiring", i);
        int retiring = bool_at(c, r, p);
        char note[360];
        snprintf(note, sizeof(note), "%s%s%s", draining ? "draining" : retiring ? "retiring" : "",
                 (draining || retiring) && reason[0] ? "; " : "", reason);
        printf("  %-32s %5lld %-11s %-21s %8lld  %s\n", id, gen, phase, addr[0] ? addr : "-", restarts, note);
    }
}

/* ---- commands ---- */

static double now_s(void) { return (double)ib_now_ns() / 1e9; }

/* Polls GET until the workload is ready: every current replica ready, no retiring one. */
static int wait_ready(cli_t *c, const char *id, double timeout_s)
{
    char path[128], last[600] = "";
    snprintf(path, sizeof(path), "/v1/workloads/%s", id);
    double t0 = now_s();
    int tty = isatty(2);
    for (;;) {
        resp_t r;
        if (request(c, "GET", path, NULL, 0, &r) != 0)
            return 1;
        char phase[24], msg[400], line[600];
        double t = now_s() - t0;
        if (r.status == 503 && t < timeout_s) { /* the cluster server restarting: keep waiting */
            str_at(c, &r, "/error/message", msg, sizeof(msg));
            free(r.body);
            snprintf(line, sizeof(line), "%s: %.200s; retrying", id, msg);
            if (strcmp(line, last) != 0)
                fprintf(stderr, "%s[%5.1fs] %s\n", tty ? "\r\033[K" : "", t, line);
            snprintf(last, sizeof(last), "%s", line);
            usleep(500000);
            continue;
        }
        if (r.status != 200) {
            int rc = api_error(c, &r);
            free(r.body);
            return rc;
        }
        str_at(c, &r, "/status/phase", phase, sizeof(phase));
        str_at(c, &r, "/status/message", msg, sizeof(msg));
        long long ready = int_at(c, &r, "/status/ready_replicas"), want = int_at(c, &r, "/replicas"),
                  gen = int_at(c, &r, "/generation");
        snprintf(line, sizeof(line), "%s: generation %lld, %lld/%lld ready, %s%s%s", id, gen, ready, want, phase,
                 msg[0] ? ": " : "", msg);
        if (strcmp(line, last) != 0 || tty) {
            if (tty)
                fprintf(stderr, "\r\033[K[%5.1fs] %.*s", t, 150, line);
            else
                fprintf(stderr, "[%5.1fs] %s\n", t, line);
            snprintf(last, sizeof(last), "%s", line);
        }
        int done = ib_workload_phase_parse(phase, strlen(phase)) == IB_WORKLOAD_READY;
        if (done) {
            if (tty)
                fprintf(stderr, "\n");
            if (!c->json_out)
                fprintf(stderr, "%s: ready in %.1f s\n", id, t);
            else
                fwrite(r.body, 1, r.len, stdout);
            free(r.body);
            return 0;
        }
        free(r.body);
        if (t > timeout_s) {
            fprintf(stderr, "%sibctl: %s not ready after %.0f s: %s\n", tty ? "\n" : "", id, timeout_s, line);
            return 1;
        }
        usleep(250000);
    }
}

/* Field flags -> a JSON body. Returns the index of the first argument not used, -1 on error. */
static int spec_flags(int argc, char **argv, int i, char *body, size_t cap, int *wait, double *timeout, const char *id)
{
    static const struct {
        const char *flag, *field;
        int num; /* 0 a string, 1 an integer, 2 on|off */
    } map[] = {{"--model", "model", 0},         {"--weights", "weights", 0},          {"--replicas", "replicas", 1},
               {"--engine", "engine", 0},       {"--engine-args", "engine_args", 0},  {"--engine-cmd", "engine_cmd", 0},
               {"--version", "version", 0},     {"--template", "chat_template", 0},   {"--tokenizer", "tokenizer", 0},
               {"--block-size", "block_size", 1}, {"--context-length", "context_length", 1}, {"--policy", "policy", 0},
               {"--cpu", "cpu", 0},             {"--memory", "memory", 0},            {"--gpus", "gpus", 1},
               {"--kv-events", "kv_events", 2}};
    size_t n = 0;
    ib_buf_t esc = {0};
    n += (size_t)snprintf(body + n, cap - n, "{");
    if (id != NULL)
        n += (size_t)snprintf(body + n, cap - n, "\"id\":\"%s\"", id);
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0) {
            *wait = 1;
            continue;
        }
        if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            *timeout = atof(argv[++i]);
            continue;
        }
        size_t k = 0;
        while (k < sizeof(map) / sizeof(map[0]) && strcmp(argv[i], map[k].flag) != 0)
            k++;
        if (k == sizeof(map) / sizeof(map[0]) || i + 1 >= argc) {
            fprintf(stderr, "ibctl: unknown option or missing value: %s\n", argv[i]);
            ib_buf_free(&esc);
            return -1;
        }
        const char *v = argv[++i];
        if (map[k].num == 2) {
            int on = strcmp(v, "on") == 0 || strcmp(v, "true") == 0;
            if (!on && strcmp(v, "off") != 0 && strcmp(v, "false") != 0) {
                fprintf(stderr, "ibctl: %s wants on or off, got '%s'\n", map[k].flag, v);
                ib_buf_free(&esc);
                return -1;
            }
            n += (size_t)snprintf(body + n, cap - n, "%s\"%s\":%s", n > 1 ? "," : "", map[k].field,
                                  on ? "true" : "false");
        } else if (map[k].num) {
            char *end;
            long long x = strtoll(v, &end, 10);
            if (*v == '\0' || *end != '\0') {
                fprintf(stderr, "ibctl: %s wants an integer, got '%s'\n", map[k].flag, v);
                ib_buf_free(&esc);
                return -1;
            }
            n += (size_t)snprintf(body + n, cap - n, "%s\"%s\":%lld", n > 1 ? "," : "", map[k].field, x);
        } else {
            ib_buf_reset(&esc);
            ib_json_escape(&esc, v, strlen(v));
            n += (size_t)snprintf(body + n, cap - n, "%s\"%s\":\"%.*s\"", n > 1 ? "," : "", map[k].field,
                                  (int)esc.len, esc.ptr);
        }
        if (n >= cap - 2) {
            fprintf(stderr, "ibctl: arguments too long\n");
            ib_buf_free(&esc);
            return -1;
        }
    }
    snprintf(body + n, cap - n, "}");
    ib_buf_free(&esc);
    return i;
}

static int send_and_show(cli_t *c, const char *method, const char *path, const char *body, size_t blen, int ok,
                         int wait, double timeout, const char *id)
{
    resp_t r;
    if (request(c, method, path, body, blen, &r) != 0)
        return 1;
    int rc;
    if (r.status != ok) {
        rc = api_error(c, &r);
    } else if (wait) {
        char wid[64];
        if (id == NULL) {
            str_at(c, &r, "/id", wid, sizeof(wid));
            id = wid;
        }
        free(r.body);
        return wait_ready(c, id, timeout);
    } else {
        print_workload(c, &r);
        rc = 0;
    }
    free(r.body);
    return rc;
}

/* --wait and --timeout S among argv[from..argc). */
static void wait_flags(int argc, char **argv, int from, int *wait, double *timeout)
{
    for (int i = from; i < argc; i++)
        if (strcmp(argv[i], "--wait") == 0)
            *wait = 1;
        else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
            *timeout = atof(argv[++i]);
}

static int workload_list(cli_t *c)
{
    resp_t r;
    if (request(c, "GET", "/v1/workloads", NULL, 0, &r) != 0)
        return 1;
    int rc = 0;
    if (r.status != 200) {
        rc = api_error(c, &r);
    } else if (c->json_out) {
        fwrite(r.body, 1, r.len, stdout);
    } else {
        print_header();
        for (int i = 0; i < 4096; i++) {
            char base[32], p[48];
            snprintf(base, sizeof(base), "/data/%d", i);
            snprintf(p, sizeof(p), "%s/id", base);
            ib_span_t s;
            if (ib_json_pointer_string(c->json, r.body, r.len, p, &s) != 0)
                break;
            print_workload_row(c, &r, base);
        }
    }
    free(r.body);
    return rc;
}

/* workload create ID --flags..., or workload create -f SPEC.json [--wait] [--timeout S]. */
static int workload_create(cli_t *c, int argc, char **argv, const char *id)
{
    int wait = 0;
    double timeout = 120;
    if (argc >= 3 && strcmp(argv[1], "-f") == 0) {
        size_t len;
        char *spec = ib_read_file(argv[2], &len);
        if (spec == NULL) {
            fprintf(stderr, "ibctl: cannot read %s\n", argv[2]);
            return 1;
        }
        wait_flags(argc, argv, 3, &wait, &timeout);
        int rc = send_and_show(c, "POST", "/v1/workloads", spec, len, 201, wait, timeout, NULL);
        free(spec);
        return rc;
    }
    if (id == NULL) {
        fprintf(stderr, "ibctl: workload create ID --model M --weights PATH ... (or -f SPEC.json)\n");
        return 2;
    }
    char body[16384];
    if (spec_flags(argc, argv, 2, body, sizeof(body), &wait, &timeout, id) < 0)
        return 2;
    return send_and_show(c, "POST", "/v1/workloads", body, strlen(body), 201, wait, timeout, id);
}

static int workload_delete(cli_t *c, const char *id, const char *path)
{
    resp_t r;
    if (request(c, "DELETE", path, NULL, 0, &r) != 0)
        return 1;
    int rc = r.status == 200 ? 0 : api_error(c, &r);
    if (rc == 0) {
        if (c->json_out)
            fwrite(r.body, 1, r.len, stdout);
        else
            printf("workload %s deleted: its replicas drain and stop\n", id);
    }
    free(r.body);
    return rc;
}

/* update (spec flags), scale N, wait: the commands on one existing workload. */
static int workload_change(cli_t *c, const char *sub, int argc, char **argv, const char *id, const char *path)
{
    char body[16384];
    int wait = 0;
    double timeout = 120;
    if (strcmp(sub, "update") == 0) {
        if (spec_flags(argc, argv, 2, body, sizeof(body), &wait, &timeout, NULL) < 0)
            return 2;
        if (strcmp(body, "{}") == 0) {
            fprintf(stderr, "ibctl: workload update %s: nothing to change\n", id);
            return 2;
        }
        return send_and_show(c, "PATCH", path, body, strlen(body), 200, wait, timeout, id);
    }
    if (strcmp(sub, "scale") == 0) {
        char *end;
        long n = argc > 2 ? strtol(argv[2], &end, 10) : -1;
        if (argc < 3 || *end != '\0') {
            fprintf(stderr, "ibctl: workload scale ID N\n");
            return 2;
        }
        wait_flags(argc, argv, 3, &wait, &timeout);
        snprintf(body, sizeof(body), "{\"replicas\":%ld}", n);
        return send_and_show(c, "PATCH", path, body, strlen(body), 200, wait, timeout, id);
    }
    wait_flags(argc, argv, 2, &wait, &timeout); /* wait */
    return wait_ready(c, id, timeout);
}

static int cmd_workload(cli_t *c, int argc, char **argv)
{
    if (argc < 1) {
        usage(stderr);
        return 2;
    }
    const char *sub = argv[0];
    const char *id = argc > 1 && argv[1][0] != '-' ? argv[1] : NULL;
    if (id != NULL && !ib_workload_id_valid(id, strlen(id))) {
        fprintf(stderr, "ibctl: '%s' is not a workload id (" IB_WORKLOAD_ID_RULE ")\n", id);
        return 2;
    }
    char path[128];
    if (id != NULL)
        snprintf(path, sizeof(path), "/v1/workloads/%s", id);
    if (strcmp(sub, "list") == 0)
        return workload_list(c);
    if (strcmp(sub, "create") == 0)
        return workload_create(c, argc, argv, id);
    int known = strcmp(sub, "get") == 0 || strcmp(sub, "delete") == 0 || strcmp(sub, "update") == 0 ||
                strcmp(sub, "scale") == 0 || strcmp(sub, "wait") == 0;
    if (!known) {
        fprintf(stderr, "ibctl: unknown command 'workload %s'\n", sub);
        usage(stderr);
        return 2;
    }
    if (id == NULL) {
        fprintf(stderr, "ibctl: workload %s needs a workload id\n", sub);
        return 2;
    }
    if (strcmp(sub, "get") == 0)
        return send_and_show(c, "GET", path, NULL, 0, 200, 0, 0, id);
    if (strcmp(sub, "delete") == 0)
        return workload_delete(c, id, path);
    return workload_change(c, sub, argc, argv, id, path);
}

static int cmd_token(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "create") != 0) {
        usage(stderr);
        return 2;
    }
    const char *secret_file = NULL, *key_file = NULL;
    ib_jwt_claims_t cl = {.subject = "ibctl", .scope = "workloads:read workloads:write"};
    long long ttl = 3600, nbf = 0;
    int has_nbf = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            fprintf(stderr, "ibctl: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "--secret-file") == 0)
            secret_file = v;
        else if (strcmp(a, "--key") == 0)
            key_file = v;
        else if (strcmp(a, "--sub") == 0)
            cl.subject = v;
        else if (strcmp(a, "--scope") == 0)
            cl.scope = v[0] ? v : NULL;
        else if (strcmp(a, "--iss") == 0)
            cl.issuer = v;
        else if (strcmp(a, "--aud") == 0)
            cl.audience = v;
        else if (strcmp(a, "--ttl-s") == 0)
            ttl = atoll(v);
        else if (strcmp(a, "--nbf-s") == 0)
            nbf = atoll(v), has_nbf = 1;
        else {
            fprintf(stderr, "ibctl: unknown option %s\n", a);
            return 2;
        }
    }
    if ((secret_file == NULL) == (key_file == NULL)) {
        fprintf(stderr, "ibctl: token create wants --secret-file F (HS256) or --key PRIVATE.pem (RS256)\n");
        return 2;
    }
    size_t len;
    char *key = ib_read_file(secret_file ? secret_file : key_file, &len);
    if (key == NULL) {
        fprintf(stderr, "ibctl: cannot read %s\n", secret_file ? secret_file : key_file);
        return 1;
    }
    if (secret_file != NULL) {
        trim(key);
        len = strlen(key);
    }
    int64_t now = (int64_t)time(NULL);
    cl.issued_at = now;
    cl.expires_at = now + ttl;
    cl.not_before = has_nbf ? now + nbf : 0;
    char err[200];
    char *tok = ib_jwt_sign(secret_file ? "HS256" : "RS256", (const unsigned char *)key, len, &cl, err, sizeof(err));
    free(key);
    if (tok == NULL) {
        fprintf(stderr, "ibctl: %s\n", err);
        return 1;
    }
    printf("%s\n", tok);
    free(tok);
    return 0;
}

int main(int argc, char **argv)
{
    cli_t c = {0};
    c.server = getenv("IBCTL_SERVER") ? getenv("IBCTL_SERVER") : DEFAULT_SERVER;
    const char *token = getenv("IBCTL_TOKEN"), *token_file = getenv("IBCTL_TOKEN_FILE");
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        if (strcmp(argv[i], "--server") == 0)
            c.server = argv[++i];
        else if (strcmp(argv[i], "--token") == 0)
            token = argv[++i], token_file = NULL;
        else if (strcmp(argv[i], "--token-file") == 0)
            token_file = argv[++i], token = NULL;
        else if (strcmp(argv[i], "-o") == 0) {
            const char *o = argv[++i];
            if (strcmp(o, "json") != 0 && strcmp(o, "table") != 0) {
                fprintf(stderr, "ibctl: -o table or -o json\n");
                return 2;
            }
            c.json_out = strcmp(o, "json") == 0;
        } else {
            fprintf(stderr, "ibctl: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[i], "token") == 0)
        return cmd_token(argc - i - 1, argv + i + 1);
    if (strcmp(argv[i], "workload") != 0 && strcmp(argv[i], "workloads") != 0) {
        fprintf(stderr, "ibctl: unknown command '%s'\n", argv[i]);
        usage(stderr);
        return 2;
    }
    const char *hp = c.server;
    if (strncmp(hp, "https://", 8) == 0) {
        fprintf(stderr, "ibctl: https is not supported: put a TLS terminator in front and use http on loopback\n");
        return 2;
    }
    if (strncmp(hp, "http://", 7) == 0)
        hp += 7;
    snprintf(c.hostport, sizeof(c.hostport), "%.*s", (int)strcspn(hp, "/"), hp);
    char tokbuf[8000] = "";
    if (token_file != NULL) {
        size_t len;
        char *t = ib_read_file(token_file, &len);
        if (t == NULL) {
            fprintf(stderr, "ibctl: cannot read the token file %s\n", token_file);
            return 1;
        }
        snprintf(tokbuf, sizeof(tokbuf), "%s", t);
        free(t);
        trim(tokbuf);
        token = tokbuf;
    }
    if (token != NULL && token[0] != '\0') {
        if (strlen(token) > sizeof(c.auth) - 40 || strpbrk(token, "\r\n") != NULL) {
            fprintf(stderr, "ibctl: the token is malformed\n");
            return 2;
        }
        snprintf(c.auth, sizeof(c.auth), "Authorization: Bearer %s\r\n", token);
    }
    c.json = ib_json_parser_new(64u << 20);
    int rc = c.json ? cmd_workload(&c, argc - i - 1, argv + i + 1) : 1;
    ib_json_parser_free(c.json);
    return rc;
}
