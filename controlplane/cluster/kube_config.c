/* Where the API server is and who we are: a kubeconfig (libyaml) or the pod's service
 * account (include/ibrain/kube.h). */
#include <errno.h>
#include <libgen.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "ibrain/kube.h"

#define SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"

/* The whole file, NUL-terminated, or NULL with errno set. */
static char *read_file(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *s = malloc(max + 1);
    size_t n = s ? fread(s, 1, max + 1, f) : 0;
    fclose(f);
    if (s == NULL || n > max) {
        free(s);
        errno = EFBIG;
        return NULL;
    }
    s[n] = '\0';
    return s;
}

/* ---- a kubeconfig as a libyaml document ---- */

static yaml_node_t *get(yaml_document_t *d, yaml_node_t *map, const char *key)
{
    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(d, p->key);
        if (k != NULL && k->type == YAML_SCALAR_NODE && strcmp((const char *)k->data.scalar.value, key) == 0)
            return yaml_document_get_node(d, p->value);
    }
    return NULL;
}

static const char *scalar(yaml_node_t *n)
{
    return n != NULL && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* The entry named <name> of the list <list> ("clusters", "users", "contexts"): its <inner> map. */
static yaml_node_t *named(yaml_document_t *d, yaml_node_t *root, const char *list, const char *name, const char *inner)
{
    yaml_node_t *l = get(d, root, list);
    if (l == NULL || l->type != YAML_SEQUENCE_NODE || name == NULL)
        return NULL;
    for (yaml_node_item_t *i = l->data.sequence.items.start; i < l->data.sequence.items.top; i++) {
        yaml_node_t *e = yaml_document_get_node(d, *i);
        const char *n = scalar(get(d, e, "name"));
        if (n != NULL && strcmp(n, name) == 0)
            return get(d, e, inner);
    }
    return NULL;
}

static char *b64_decode(const char *s)
{
    size_t n = strlen(s);
    unsigned char *out = malloc(n / 4 * 3 + 4);
    if (out == NULL)
        return NULL;
    int len = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    if (len < 0) {
        free(out);
        return NULL;
    }
    while (n > 0 && s[n - 1] == '=') /* EVP_DecodeBlock counts padding as bytes */
        n--, len--;
    out[len] = '\0';
    return (char *)out;
}

/* PEM from "<field>-data" (base64) or "<field>" (a file, relative to the kubeconfig's dir). */
static int pem(yaml_document_t *d, yaml_node_t *m, const char *field, const char *dir, char **out, char *err,
               size_t errlen)
{
    char key[64];
    snprintf(key, sizeof(key), "%s-data", field);
    const char *data = scalar(get(d, m, key)), *file = scalar(get(d, m, field));
    *out = NULL;
    if (data != NULL) {
        if ((*out = b64_decode(data)) == NULL) {
            snprintf(err, errlen, "%s: not base64", key);
            return -1;
        }
    } else if (file != NULL) {
        char path[1024];
        snprintf(path, sizeof(path), "%s%s%s", file[0] == '/' ? "" : dir, file[0] == '/' ? "" : "/", file);
        if ((*out = read_file(path, 1 << 20)) == NULL) {
            snprintf(err, errlen, "%s: %s: %s", field, path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

int ib_kube_conn_from_kubeconfig(const char *path, ib_kube_conn_t *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "kubeconfig %s: %s", path, strerror(errno));
        return -1;
    }
    char dirbuf[1024];
    snprintf(dirbuf, sizeof(dirbuf), "%s", path);
    const char *dir = dirname(dirbuf);
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    int rc = -1;
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, errlen, "kubeconfig %s: line %zu: %s", path, parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "not YAML");
        yaml_parser_delete(&parser);
        fclose(f);
        return -1;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    const char *ctx_name = scalar(get(&doc, root, "current-context"));
    yaml_node_t *ctx = named(&doc, root, "contexts", ctx_name, "context");
    yaml_node_t *cluster = named(&doc, root, "clusters", scalar(get(&doc, ctx, "cluster")), "cluster");
    yaml_node_t *user = named(&doc, root, "users", scalar(get(&doc, ctx, "user")), "user");
    const char *server = scalar(get(&doc, cluster, "server"));
    if (ctx == NULL || cluster == NULL || server == NULL) {
        snprintf(err, errlen, "kubeconfig %s: no current-context with a cluster and its server", path);
        goto out;
    }
    /* As client-go does, a server without a scheme is https. */
    int sn = snprintf(c->server, sizeof(c->server), "%s%s", strstr(server, "://") ? "" : "https://", server);
    size_t sl = sn > 0 ? strlen(c->server) : 0;
    while (sl > 0 && c->server[sl - 1] == '/')
        c->server[--sl] = '\0';
    const char *host = strstr(c->server, "://");
    if (sn < 0 || (size_t)sn >= sizeof(c->server) ||
        (strncmp(c->server, "https://", 8) != 0 && strncmp(c->server, "http://", 7) != 0) || host[3] == '\0') {
        snprintf(err, errlen, "kubeconfig %s: cluster server \"%.128s\" is not an http(s) URL with a host", path,
                 server);
        goto out;
    }
    const char *ns = scalar(get(&doc, ctx, "namespace"));
    snprintf(c->namespace_, sizeof(c->namespace_), "%s", ns ? ns : "");
    const char *insecure = scalar(get(&doc, cluster, "insecure-skip-tls-verify"));
    c->insecure = insecure != NULL && strcmp(insecure, "true") == 0;
    if (pem(&doc, cluster, "certificate-authority", dir, &c->ca_pem, err, errlen) != 0 ||
        pem(&doc, user, "client-certificate", dir, &c->cert_pem, err, errlen) != 0 ||
        pem(&doc, user, "client-key", dir, &c->key_pem, err, errlen) != 0)
        goto out;
    const char *token = scalar(get(&doc, user, "token")), *token_file = scalar(get(&doc, user, "tokenFile"));
    if (token != NULL)
        snprintf(c->token, sizeof(c->token), "%s", token);
    if (token_file != NULL)
        snprintf(c->token_file, sizeof(c->token_file), "%s%s%s", token_file[0] == '/' ? "" : dir,
                 token_file[0] == '/' ? "" : "/", token_file);
    if ((c->cert_pem == NULL) != (c->key_pem == NULL)) {
        snprintf(err, errlen, "kubeconfig %s: a client certificate needs its key, and the other way round", path);
        goto out;
    }
    if (get(&doc, user, "exec") != NULL || get(&doc, user, "auth-provider") != NULL) {
        snprintf(err, errlen, "kubeconfig %s: user '%s' authenticates through a plugin (exec/auth-provider), which "
                 "ib-clusterd does not run: use a token or a client certificate", path,
                 scalar(get(&doc, ctx, "user")) ? scalar(get(&doc, ctx, "user")) : "");
        goto out;
    }
    rc = 0;
out:
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    if (rc != 0)
        ib_kube_conn_free(c);
    return rc;
}

int ib_kube_conn_in_cluster(ib_kube_conn_t *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    const char *host = getenv("KUBERNETES_SERVICE_HOST"), *port = getenv("KUBERNETES_SERVICE_PORT");
    if (host == NULL || port == NULL || host[0] == '\0') {
        snprintf(err, errlen, "not in a pod: KUBERNETES_SERVICE_HOST/_PORT are not set (give --kubeconfig)");
        return -1;
    }
    snprintf(c->server, sizeof(c->server), strchr(host, ':') ? "https://[%s]:%s" : "https://%s:%s", host, port);
    snprintf(c->token_file, sizeof(c->token_file), SA_DIR "/token");
    if ((c->ca_pem = read_file(SA_DIR "/ca.crt", 1 << 20)) == NULL) {
        snprintf(err, errlen, SA_DIR "/ca.crt: %s", strerror(errno));
        return -1;
    }
    char *ns = read_file(SA_DIR "/namespace", 255);
    if (ns != NULL) {
        snprintf(c->namespace_, sizeof(c->namespace_), "%s", ns);
        c->namespace_[strcspn(c->namespace_, "\r\n")] = '\0';
        free(ns);
    }
    return 0;
}

void ib_kube_conn_free(ib_kube_conn_t *c)
{
    free(c->ca_pem);
    free(c->cert_pem);
    free(c->key_pem);
    c->ca_pem = c->cert_pem = c->key_pem = NULL;
}
