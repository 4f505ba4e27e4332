/* Requests to the API server with libcurl: blocking calls on one kept-alive handle, and
 * watch streams on a multi handle that the driver's tick moves on (include/ibrain/kube.h). */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ibrain/kube.h"

#define MAX_WATCHES 8
#define MAX_EVENT_BYTES (8u << 20) /* one watch event line; a bigger one ends the watch */

typedef struct watch {
    CURL *h;
    struct curl_slist *headers;
    ib_buf_t line;
    ib_kube_stream_fn fn;
    void *ctx;
    int index;
    int list;
    int overflow;
} watch_t;

struct ib_kube_client {
    ib_kube_conn_t conn;
    CURL *h; /* blocking calls */
    CURLM *multi;
    watch_t watches[MAX_WATCHES];
    uint64_t requests;
};

static void set_tls(ib_kube_client_t *k, CURL *h)
{
    const ib_kube_conn_t *c = &k->conn;
    if (c->ca_pem != NULL) {
        struct curl_blob ca = {.data = c->ca_pem, .len = strlen(c->ca_pem), .flags = CURL_BLOB_COPY};
        curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &ca);
    }
    if (c->cert_pem != NULL && c->key_pem != NULL) {
        struct curl_blob cert = {.data = c->cert_pem, .len = strlen(c->cert_pem), .flags = CURL_BLOB_COPY};
        struct curl_blob key = {.data = c->key_pem, .len = strlen(c->key_pem), .flags = CURL_BLOB_COPY};
        curl_easy_setopt(h, CURLOPT_SSLCERT_BLOB, &cert);
        curl_easy_setopt(h, CURLOPT_SSLCERTTYPE, "PEM");
        curl_easy_setopt(h, CURLOPT_SSLKEY_BLOB, &key);
        curl_easy_setopt(h, CURLOPT_SSLKEYTYPE, "PEM");
    }
    if (c->insecure) {
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
}

/* The Authorization header (a token file is read again each time: tokens rotate). */
static struct curl_slist *auth_headers(const ib_kube_client_t *k, struct curl_slist *l)
{
    char token[4096] = "";
    if (k->conn.token_file[0] != '\0') {
        FILE *f = fopen(k->conn.token_file, "r");
        if (f != NULL) {
            size_t n = fread(token, 1, sizeof(token) - 1, f);
            token[n] = '\0';
            token[strcspn(token, "\r\n")] = '\0';
            fclose(f);
        }
    } else {
        snprintf(token, sizeof(token), "%s", k->conn.token);
    }
    if (token[0] != '\0') {
        char h[4200];
        snprintf(h, sizeof(h), "Authorization: Bearer %s", token);
        l = curl_slist_append(l, h);
    }
    return curl_slist_append(l, "Accept: application/json");
}

ib_kube_client_t *ib_kube_client_new(const ib_kube_conn_t *conn)
{
    /* reference-counted and thread-safe since libcurl 7.84; undone in ib_kube_client_free */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    ib_kube_client_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        curl_global_cleanup();
        return NULL;
    }
    k->conn = *conn;
    k->conn.ca_pem = conn->ca_pem ? strdup(conn->ca_pem) : NULL;
    k->conn.cert_pem = conn->cert_pem ? strdup(conn->cert_pem) : NULL;
    k->conn.key_pem = conn->key_pem ? strdup(conn->key_pem) : NULL;
    k->h = curl_easy_init();
    k->multi = curl_multi_init();
    if (k->h == NULL || k->multi == NULL) {
        ib_kube_client_free(k);
        return NULL;
    }
    return k;
}

static void watch_stop(ib_kube_client_t *k, watch_t *w)
{
    if (w->h != NULL) {
        curl_multi_remove_handle(k->multi, w->h);
        curl_easy_cleanup(w->h);
    }
    curl_slist_free_all(w->headers);
    ib_buf_free(&w->line);
    memset(w, 0, sizeof(*w));
}

void ib_kube_client_free(ib_kube_client_t *k)
{
    if (k == NULL)
        return;
    for (int i = 0; i < MAX_WATCHES; i++)
        watch_stop(k, &k->watches[i]);
    if (k->multi != NULL)
        curl_multi_cleanup(k->multi);
    if (k->h != NULL)
        curl_easy_cleanup(k->h);
    ib_kube_conn_free(&k->conn);
    free(k);
    curl_global_cleanup();
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    ib_buf_t *b = arg;
    if (ib_buf_try_append(b, data, size * n) != 0)
        return 0;
    return size * n;
}

void ib_kube_request(ib_kube_client_t *k, const char *method, const char *path, const char *ctype, const char *body,
                     size_t len, long timeout_ms, ib_kube_resp_t *r)
{
    memset(r, 0, sizeof(*r));
    char url[1024];
    snprintf(url, sizeof(url), "%s%s", k->conn.server, path);
    CURL *h = k->h;
    curl_easy_reset(h);
    set_tls(k, h);
    struct curl_slist *headers = auth_headers(k, NULL);
    if (ctype != NULL) {
        char ct[128];
        snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
        headers = curl_slist_append(headers, ct);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (body != NULL) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r->body);
    k->requests++;
    CURLcode rc = curl_easy_perform(h);
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    else
        snprintf(r->error, sizeof(r->error), "%s: %s", k->conn.server, curl_easy_strerror(rc));
    curl_slist_free_all(headers);
}

/* A list: the whole body; a watch: its lines, one event each. */
static size_t on_watch(char *data, size_t size, size_t n, void *arg)
{
    watch_t *w = arg;
    size_t total = size * n;
    long status = 0;
    curl_easy_getinfo(w->h, CURLINFO_RESPONSE_CODE, &status);
    if (w->list || status != 200) { /* an error's body is kept whole too, for its message */
        if (w->line.len + total > MAX_EVENT_BYTES * 4u) {
            w->overflow = 1;
            return 0;
        }
        return ib_buf_try_append(&w->line, data, total) == 0 ? total : 0;
    }
    const char *p = data, *end = data + total;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t take = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (w->line.len + take > MAX_EVENT_BYTES) {
            w->overflow = 1;
            return 0; /* ends the transfer; the watch is restarted with a list */
        }
        if (ib_buf_try_append(&w->line, p, take) != 0)
            return 0;
        if (nl == NULL)
            break;
        if (w->line.len > 0)
            w->fn(w->ctx, w->index, IB_KUBE_EVENT, w->line.ptr, w->line.len, 200);
        w->line.len = 0;
        p = nl + 1;
    }
    return total;
}

int ib_kube_stream(ib_kube_client_t *k, int index, const char *path, int list, ib_kube_stream_fn fn, void *ctx)
{
    if (index < 0 || index >= MAX_WATCHES)
        return -1;
    watch_t *w = &k->watches[index];
    watch_stop(k, w);
    w->h = curl_easy_init();
    if (w->h == NULL)
        return -1;
    w->fn = fn;
    w->ctx = ctx;
    w->index = index;
    w->list = list;
    char url[1024];
    snprintf(url, sizeof(url), "%s%s", k->conn.server, path);
    set_tls(k, w->h);
    w->headers = auth_headers(k, NULL);
    curl_easy_setopt(w->h, CURLOPT_URL, url);
    curl_easy_setopt(w->h, CURLOPT_HTTPHEADER, w->headers);
    curl_easy_setopt(w->h, CURLOPT_WRITEFUNCTION, on_watch);
    curl_easy_setopt(w->h, CURLOPT_WRITEDATA, w);
    curl_easy_setopt(w->h, CURLOPT_PRIVATE, w);
    /* a watch that went quiet (the server gone without a FIN) ends after 60 s with nothing,
     * bookmarks included; the server sends one about every minute, and timeoutSeconds ends it */
    curl_easy_setopt(w->h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(w->h, CURLOPT_LOW_SPEED_TIME, 90L);
    if (list)
        curl_easy_setopt(w->h, CURLOPT_TIMEOUT_MS, 10000L);
    k->requests++;
    return curl_multi_add_handle(k->multi, w->h) == CURLM_OK ? 0 : -1;
}

int ib_kube_streaming(const ib_kube_client_t *k, int index)
{
    return index >= 0 && index < MAX_WATCHES && k->watches[index].h != NULL;
}

void ib_kube_poll(ib_kube_client_t *k)
{
    int running = 0;
    curl_multi_perform(k->multi, &running);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(k->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        watch_t *w = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&w);
        if (w == NULL)
            continue;
        long status = 0;
        curl_easy_getinfo(w->h, CURLINFO_RESPONSE_CODE, &status);
        if (m->data.result != CURLE_OK) {
            if (!w->list)
                fprintf(stderr, "ib-clusterd: kubernetes watch %d ended: %s%s\n", w->index,
                        curl_easy_strerror(m->data.result), w->overflow ? " (an event over 8 MiB)" : "");
            status = 0;
        }
        /* the callback may start this stream again: hand it a copy of what it needs */
        ib_kube_stream_fn fn = w->fn;
        void *ctx = w->ctx;
        int index = w->index, list = w->list;
        ib_buf_t body = w->line;
        w->line = (ib_buf_t){0};
        watch_stop(k, w);
        if (list && status == 200)
            fn(ctx, index, IB_KUBE_LIST, body.ptr, body.len, status);
        fn(ctx, index, IB_KUBE_END, body.ptr, body.len, status);
        ib_buf_free(&body);
    }
}

uint64_t ib_kube_requests(const ib_kube_client_t *k)
{
    return k->requests;
}

int ib_kube_grpc_code(long status)
{
    switch (status) {
    case 0: return IB_GRPC_UNAVAILABLE;
    case 400: case 422: return IB_GRPC_INVALID_ARGUMENT;
    case 401: return IB_GRPC_UNAUTHENTICATED;
    case 403: return IB_GRPC_PERMISSION_DENIED;
    case 404: return IB_GRPC_NOT_FOUND;
    case 409: return IB_GRPC_ABORTED; /* a conflict of field managers or of resourceVersion */
    case 410: return IB_GRPC_ABORTED;
    case 429: return IB_GRPC_RESOURCE_EXHAUSTED;
    case 500: case 502: case 503: case 504: return IB_GRPC_UNAVAILABLE;
    default: return status >= 200 && status < 300 ? IB_GRPC_OK : IB_GRPC_INTERNAL;
    }
}

int ib_kube_error(const ib_kube_resp_t *r, ib_json_parser_t *json, const char *what, char *err, size_t errlen)
{
    if (r->status == 0) {
        snprintf(err, errlen, "%s: the Kubernetes API server is unreachable (%s)", what, r->error);
        return IB_GRPC_UNAVAILABLE;
    }
    ib_span_t msg = {0};
    if (r->body.len == 0 || ib_json_pointer_string(json, r->body.ptr, r->body.len, "/message", &msg) != 0)
        msg.ptr = "", msg.len = 0;
    snprintf(err, errlen, "%s: Kubernetes API %ld: %.*s", what, r->status, (int)(msg.len > 300 ? 300 : msg.len),
             msg.ptr);
    return ib_kube_grpc_code(r->status);
}
