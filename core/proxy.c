/* proxy.c - proxies live here for the life of the process.
 *
 * Ids are array indexes + 1 and are never reused, so Lua may hold an id
 * or a pointer across a reload; a proxy dropped from the config is only
 * flagged REMOVED and keeps its counters. */
#include "proxy.h"
#include "upstream.h"
#include "health.h"
#include "loop.h"
#include "uppool.h"
#include "transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROXY_MAX 1000000

static struct proxy **proxies;
static uint32_t nproxies, cap_proxies;

uint32_t ferry_proxy_count(void)
{
    return nproxies;
}

struct proxy *proxy_by_id(uint32_t id)
{
    if (id == 0 || id > nproxies) {
        return NULL;
    }
    return proxies[id - 1];
}

struct ferry_proxy *ferry_proxy_get(uint32_t id)
{
    struct proxy *p = proxy_by_id(id);
    return p != NULL ? &p->pub : NULL;
}

static char *dup_or_null(const char *s)
{
    return (s != NULL && *s != '\0') ? strdup(s) : NULL;
}

size_t base64_encode(const unsigned char *in, size_t n, char *out, size_t room)
{
    static const char al[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 <= room; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n) {
            v |= (unsigned)in[i + 1] << 8;
        }
        if (i + 2 < n) {
            v |= in[i + 2];
        }
        out[o++] = al[(v >> 18) & 63];
        out[o++] = al[(v >> 12) & 63];
        out[o++] = i + 1 < n ? al[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? al[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

static int b64val(char ch)
{
    if (ch >= 'A' && ch <= 'Z') {
        return ch - 'A';
    }
    if (ch >= 'a' && ch <= 'z') {
        return ch - 'a' + 26;
    }
    if (ch >= '0' && ch <= '9') {
        return ch - '0' + 52;
    }
    if (ch == '+') {
        return 62;
    }
    if (ch == '/') {
        return 63;
    }
    return -1;
}

long base64_decode(const char *in, size_t n, unsigned char *out, size_t room)
{
    size_t o = 0;
    unsigned v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == '=') {
            break;
        }
        int d = b64val(in[i]);
        if (d < 0) {
            return -1;
        }
        v = (v << 6) | (unsigned)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= room) {
                return -1;
            }
            out[o++] = (unsigned char)((v >> bits) & 0xff);
        }
    }
    return (long)o;
}

/* Key index: chained hash, grown so chains stay short even with the
 * tens of thousands of proxies a reload may re-declare. */
static struct proxy **by_key;
static uint32_t nbuckets;

static uint32_t hash_key(const char *k)
{
    uint32_t h = 2166136261u;
    for (; *k; k++) {
        h = (h ^ (unsigned char)*k) * 16777619u;
    }
    return h;
}

static struct proxy *find_key(const char *key)
{
    if (nbuckets == 0) {
        return NULL;
    }
    for (struct proxy *p = by_key[hash_key(key) & (nbuckets - 1)]; p; p = p->next_by_key) {
        if (strcmp(p->key, key) == 0) {
            return p;
        }
    }
    return NULL;
}

static int index_key(struct proxy *p)
{
    if (nproxies >= nbuckets) {
        uint32_t nb = nbuckets ? nbuckets * 2 : 256;
        struct proxy **fresh = calloc(nb, sizeof(*fresh));
        if (fresh == NULL) {
            return -1;
        }
        for (uint32_t i = 0; i < nproxies; i++) {
            struct proxy *q = proxies[i];
            if (q == p) {
                continue;
            }
            uint32_t b = hash_key(q->key) & (nb - 1);
            q->next_by_key = fresh[b];
            fresh[b] = q;
        }
        free(by_key);
        by_key = fresh;
        nbuckets = nb;
    }
    uint32_t b = hash_key(p->key) & (nbuckets - 1);
    p->next_by_key = by_key[b];
    by_key[b] = p;
    return 0;
}

static void set_literal_addr(struct proxy *p)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)&p->addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&p->addr;
    memset(&p->addr, 0, sizeof(p->addr));
    if (inet_pton(AF_INET, p->host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)p->port);
        p->addr_len = sizeof(*a4);
        p->has_addr = 1;
    } else if (inet_pton(AF_INET6, p->host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)p->port);
        p->addr_len = sizeof(*a6);
        p->has_addr = 1;
    }
}

static char *make_auth_header(const char *user, const char *pass)
{
    char cred[1024], enc[1400];
    int n = snprintf(cred, sizeof(cred), "%s:%s", user, pass != NULL ? pass : "");
    if (n < 0 || (size_t)n >= sizeof(cred)) {
        return NULL;
    }
    base64_encode((const unsigned char *)cred, (size_t)n, enc, sizeof(enc));
    size_t len = strlen(enc) + 40;
    char *h = malloc(len);
    if (h != NULL) {
        snprintf(h, len, "Proxy-Authorization: Basic %s\r\n", enc);
    }
    return h;
}

static void replace_str(char **slot, char *fresh)
{
    free(*slot);
    *slot = fresh;
}

struct ferry_proxy *ferry_proxy_new(const char *key, int scheme, const char *host, int port,
                                    const char *user, const char *pass,
                                    const char *extra_headers, int weight, const char **err)
{
    if (key == NULL || host == NULL || *host == '\0' || port <= 0 || port > 65535 ||
        scheme == FERRY_SCHEME_DIRECT || upstream_scheme((unsigned)scheme) == NULL) {
        *err = "invalid proxy arguments";
        return NULL;
    }
    struct proxy *p = find_key(key);
    int fresh = p == NULL;
    if (fresh) {
        if (nproxies >= PROXY_MAX) {
            *err = "too many proxies";
            return NULL;
        }
        if (nproxies == cap_proxies) {
            uint32_t ncap = cap_proxies ? cap_proxies * 2 : 64;
            struct proxy **np = realloc(proxies, ncap * sizeof(*np));
            if (np == NULL) {
                *err = "out of memory";
                return NULL;
            }
            proxies = np;
            cap_proxies = ncap;
        }
        p = calloc(1, sizeof(*p));
        if (p == NULL || (p->key = strdup(key)) == NULL) {
            free(p);
            *err = "out of memory";
            return NULL;
        }
        proxies[nproxies++] = p;
        p->pub.id = nproxies;
        p->probe_verdict = -1;
        if (index_key(p) != 0) {
            nproxies--;
            free(p->key);
            free(p);
            *err = "out of memory";
            return NULL;
        }
    }
    /* A reload may change how we reach a proxy, never its counters. */
    replace_str(&p->host, strdup(host));
    p->port = port;
    p->pub.scheme = (uint32_t)scheme;
    p->pub.weight = weight > 0 ? (uint32_t)weight : 1;
    if (fresh || (p->pub.flags & FERRY_PROXY_REMOVED)) {
        health_ramp_begin(p); /* joins (again) after start: slow start */
    }
    p->pub.flags &= ~FERRY_PROXY_REMOVED;
    replace_str(&p->user, dup_or_null(user));
    replace_str(&p->pass, p->user != NULL ? strdup(pass != NULL ? pass : "") : NULL);
    replace_str(&p->auth_header, p->user != NULL ? make_auth_header(p->user, p->pass) : NULL);
    replace_str(&p->extra_headers, dup_or_null(extra_headers));
    size_t dl = strlen(host) + 32;
    char *disp = malloc(dl);
    if (disp != NULL) {
        int v6 = strchr(host, ':') != NULL;
        snprintf(disp, dl, "%s://%s%s%s:%d", upstream_url_name((unsigned)scheme),
                 v6 ? "[" : "", host, v6 ? "]" : "", port);
    }
    replace_str(&p->display, disp);
    if (p->label == NULL) {
        ferry_proxy_set_label(&p->pub, NULL);
    }
    if (fresh) {
        p->pub.rise = 2;
        p->pub.fall = 3;
        p->pub.health = p->pub.rise + p->pub.fall - 1; /* starts up */
        p->health_interval = 2.0;
    }
    p->has_addr = 0;
    set_literal_addr(p);
    if (upstream_uses_tls(p->pub.scheme) && p->tls_ctx == NULL &&
        ferry_proxy_set_tls(&p->pub, 1, NULL, NULL, err) != FERRY_OK) {
        return NULL; /* the system store would not load */
    }
    if (p->host == NULL || p->display == NULL) {
        *err = "out of memory";
        return NULL;
    }
    return &p->pub;
}

int ferry_proxy_set_tls(struct ferry_proxy *fp, int verify, const char *ca, const char *sni,
                        const char **err)
{
    static char why[256];
    struct proxy *p = (struct proxy *)fp;
    if (p == NULL) {
        *err = "no such proxy";
        return FERRY_ERROR;
    }
    struct ssl_ctx_st *ctx = tls_client_ctx(verify, ca != NULL && *ca ? ca : NULL, why,
                                            sizeof(why));
    char *name = sni != NULL && *sni ? strdup(sni) : NULL;
    if (ctx == NULL || (sni != NULL && *sni && name == NULL)) {
        tls_ctx_free(ctx);
        free(name);
        *err = ctx == NULL ? why : "out of memory";
        return FERRY_ERROR;
    }
    /* Attempts in flight keep their SSL, which holds the old context. */
    tls_ctx_free(p->tls_ctx);
    p->tls_ctx = ctx;
    free(p->tls_name);
    p->tls_name = name;
    p->tls_verify = verify ? 1 : 0;
    return FERRY_OK;
}

int ferry_proxy_set_label(struct ferry_proxy *fp, const char *label)
{
    struct proxy *p = (struct proxy *)fp;
    char num[16];
    if (p == NULL) {
        return FERRY_ERROR;
    }
    if (label == NULL || *label == '\0') {
        snprintf(num, sizeof(num), "%u", p->pub.id);
        label = num;
    }
    char *fresh = strdup(label);
    if (fresh == NULL) {
        return FERRY_ERROR;
    }
    replace_str(&p->label, fresh);
    return FERRY_OK;
}

const char *ferry_proxy_label(const struct ferry_proxy *fp)
{
    const struct proxy *p = (const struct proxy *)fp;
    return p != NULL && p->label != NULL ? p->label : "";
}

int ferry_proxy_set_flag(struct ferry_proxy *fp, uint32_t flag, int on)
{
    if (fp == NULL) {
        return FERRY_ERROR;
    }
    if (!on && (flag & FERRY_PROXY_DISABLED) && (fp->flags & FERRY_PROXY_DISABLED)) {
        health_ramp_begin((struct proxy *)fp); /* re-enabled: slow start */
    }
    if (on) {
        fp->flags |= flag;
    } else {
        fp->flags &= ~flag;
    }
    if (on && (flag & (FERRY_PROXY_REMOVED | FERRY_PROXY_DISABLED))) {
        uppool_proxy_removed((struct proxy *)fp); /* its idle connections go with it */
    }
    health_flags_changed();
    return FERRY_OK;
}

void proxy_attempt_begin(struct proxy *p)
{
    p->pub.active++;
    p->pub.requests++;
}

void proxy_attempt_end(struct proxy *p)
{
    if (p->pub.active > 0) {
        p->pub.active--;
    }
}

void proxy_success(struct proxy *p, double latency_ms)
{
    p->pub.successes++;
    p->pub.consecutive_failures = 0;
    p->pub.last_success_at = loop_now();
    if (latency_ms >= 0) {
        ewma_latency(&p->pub.latency_ewma_ms, latency_ms);
    }
    health_passive(p, 1, FERRY_FAIL_KINDS);
}

void proxy_failure(struct proxy *p, enum ferry_fail_kind kind)
{
    p->pub.failures++;
    if ((unsigned)kind < FERRY_FAIL_KINDS) {
        p->pub.fail_kind[kind]++;
    }
    p->pub.consecutive_failures++;
    p->pub.last_failure_at = loop_now();
    health_passive(p, 0, kind);
}

void proxy_free_all(void)
{
    for (uint32_t i = 0; i < nproxies; i++) {
        struct proxy *p = proxies[i];
        free(p->key);
        free(p->host);
        free(p->user);
        free(p->pass);
        free(p->auth_header);
        free(p->extra_headers);
        free(p->display);
        free(p->label);
        free(p->tls_name);
        tls_ctx_free(p->tls_ctx);
        free(p);
    }
    free(proxies);
    free(by_key);
    proxies = NULL;
    by_key = NULL;
    nproxies = cap_proxies = nbuckets = 0;
}

/* Broker (lua/ferry/broker.lua) --------------------------------------- */

/* Percent-encode s into out (RFC 3986 unreserved kept); returns the new
 * length, or room when it did not fit. */
static size_t pct_encode(const char *s, char *out, size_t o, size_t room)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        int plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                    (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' ||
                    ch == '~';
        if (o + (plain ? 1 : 3) >= room) {
            return room;
        }
        if (plain) {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    return o;
}

int ferry_proxy_url(const struct ferry_proxy *fp, char *out, uint32_t room)
{
    const struct proxy *p = (const struct proxy *)fp;
    if (p == NULL || out == NULL || room < 16 || p->host == NULL) {
        return FERRY_ERROR;
    }
    int n = snprintf(out, room, "%s://", upstream_url_name(p->pub.scheme));
    size_t o = (size_t)n;
    if (p->user != NULL) {
        o = pct_encode(p->user, out, o, room);
        if (o < room && p->pass != NULL && *p->pass != '\0') {
            if (o + 1 < room) {
                out[o++] = ':';
                o = pct_encode(p->pass, out, o, room);
            } else {
                o = room;
            }
        }
        if (o + 1 >= room) {
            return FERRY_ERROR;
        }
        out[o++] = '@';
    }
    int v6 = strchr(p->host, ':') != NULL;
    n = snprintf(out + o, room - o, "%s%s%s:%d", v6 ? "[" : "", p->host, v6 ? "]" : "", p->port);
    if (n < 0 || (size_t)n >= room - o) {
        return FERRY_ERROR;
    }
    return (int)(o + (size_t)n);
}

int ferry_proxy_lease(uint32_t id, int delta)
{
    struct proxy *p = proxy_by_id(id);
    if (p == NULL) {
        return FERRY_ERROR;
    }
    if (delta > 0) {
        p->pub.active += delta;
    } else if (delta < 0) {
        p->pub.active = p->pub.active + delta > 0 ? p->pub.active + delta : 0;
    }
    return FERRY_OK;
}

int ferry_proxy_report(uint32_t id, uint32_t exchange, int ok, int kind, double latency_ms)
{
    struct proxy *p = proxy_by_id(id);
    if (p == NULL) {
        return FERRY_ERROR;
    }
    if (!(latency_ms >= 0) || latency_ms > 3600e3) {
        latency_ms = -1; /* no sample (NaN, negative, absurd) */
    }
    if (ok) {
        proxy_success(p, latency_ms);
    } else {
        proxy_failure(p, (unsigned)kind < FERRY_FAIL_KINDS ? (enum ferry_fail_kind)kind
                                                            : FERRY_FAIL_RESET);
    }
    struct ferry_pxstate *x = ferry_pxstate_get(id, exchange);
    if (x != NULL) {
        health_pair_result(x, ok, ok ? latency_ms : -1);
    }
    return FERRY_OK;
}
