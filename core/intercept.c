/* intercept.c - a CONNECT that ferry answers itself and looks into.
 *
 * For a host of an exchange with intercept = true, dispatch marks the
 * CONNECT (FERRY_REQ_INTERCEPT) instead of choosing a proxy.  Ferry then
 * answers it (HTTP 200, SOCKS success) without reaching anything, waits
 * until that answer has left in plain, puts the client leg on TLS with a
 * leaf certificate minted for the host (mint.c), and reads HTTP requests
 * inside, one after the other on the same client connection.  Each
 * request goes through the same head parser, routing, strategy, retries
 * and accounting as a plain-HTTP one, and leaves for its origin over TLS
 * that ferry originates (c->origin_tls) through the proxy chosen for it.
 *
 * The CONNECT names the only host this session may talk to: a Host
 * header or an absolute target naming another one is answered 421.  The
 * session's state (host, port, the CONNECT's user) lives in c->mitm for
 * the connection's life; reset_request clears the per-request copies and
 * conn_intercept_input restores them. */
#include "intercept.h"
#include "conn.h"
#include "inbound.h"
#include "listener.h"
#include "log.h"
#include "mint.h"
#include "transport.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


struct mitm {
    char host[HOST_MAX_LEN + 1]; /* the CONNECT's host, lower case */
    int port;
    char user[128];              /* the CONNECT's authenticated user */
};

/* Refused-certificate lines: one per host and window. */
#define REFUSED_WINDOW 60.0
#define REFUSED_HOSTS 64

struct refused_note {
    char host[HOST_MAX_LEN + 1];
    double at;
    unsigned long long since; /* refusals not logged since then */
};

static struct refused_note refused[REFUSED_HOSTS];
static struct intercept_stats stats;

const struct intercept_stats *intercept_stats(void)
{
    return &stats;
}


int conn_intercept_possible(const struct conn *c)
{
    unsigned char ip[16];
    /* A TLS listener's client leg is TLS already (no TLS inside TLS);
     * an address has no name to mint a certificate for. */
    return c->is_connect && c->l->tls_ctx == NULL && c->mitm == NULL &&
           inet_pton(AF_INET, c->host, ip) != 1 && inet_pton(AF_INET6, c->host, ip) != 1 &&
           mint_ready();
}

void conn_intercept_free(struct conn *c)
{
    free(c->mitm);
    c->mitm = NULL;
}

static void ctx_of(const struct conn *c, struct log_ctx *ctx)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->cid = c->cid[0] ? c->cid : NULL;
    ctx->listener = c->l->name;
}

void conn_intercept_begin(struct conn *c)
{
    buf_consume(&c->cli.in, c->head_len);
    c->head_len = 0;
    if (!buf_empty(&c->cli.in)) {
        /* A ClientHello sent before our answer was read as plain bytes:
         * the TLS session cannot start from the middle of cli.in.  Said
         * in the inbound's own protocol (c->mitm is not set yet). */
        conn_fail(c, FERR_MITM_EARLY);
        return;
    }
    struct mitm *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        conn_fail(c, FERR_OVERLOADED);
        return;
    }
    for (size_t i = 0; i < HOST_MAX_LEN && c->host[i] != '\0'; i++) {
        m->host[i] = (char)((c->host[i] >= 'A' && c->host[i] <= 'Z') ? c->host[i] + 32
                                                                       : c->host[i]);
    }
    m->port = c->port;
    snprintf(m->user, sizeof(m->user), "%s", c->user);
    c->mitm = m;
    c->in->answer_ok(c);
    c->status = 200;
    stats.tunnels++;
    conn_log_done(c, NULL); /* the CONNECT's own line; each request inside logs its own */
    c->sent_any = 0;
    c->state = CS_MITM_HELLO;
    conn_arm(c, timeouts.client_head);
}

void conn_intercept_pump(struct conn *c)
{
    if (!buf_empty(&c->cli.out)) {
        return; /* the answer leaves in plain first */
    }
    if (mint_leg_accept(&c->cli, c->mitm->host) != 0) {
        struct log_ctx ctx;
        ctx_of(c, &ctx);
        log_event(LOG_WARN, "FERRY-1089", &ctx, "cannot start TLS for intercepted %s:%d",
                  c->mitm->host, c->mitm->port);
        stats.hs_fail[INTERCEPT_HS_OTHER]++;
        conn_close(c);
        return;
    }
    /* The handshake runs inside the first reads, under the head timer. */
    c->state = CS_HEAD;
    c->head_started = 0;
    c->cid[0] = '\0';
    conn_arm(c, timeouts.client_head);
}

/* Log a refused certificate once per host and window, with a count. */
static void note_refused(struct conn *c)
{
    double now = loop_now();
    struct refused_note *slot = NULL, *oldest = &refused[0];
    for (unsigned i = 0; i < REFUSED_HOSTS; i++) {
        if (strcmp(refused[i].host, c->mitm->host) == 0) {
            slot = &refused[i];
            break;
        }
        if (refused[i].at < oldest->at) {
            oldest = &refused[i];
        }
    }
    if (slot == NULL) {
        slot = oldest;
        snprintf(slot->host, sizeof(slot->host), "%s", c->mitm->host);
        slot->at = 0;
        slot->since = 0;
    }
    slot->since++;
    if (slot->at != 0 && now - slot->at < REFUSED_WINDOW) {
        return;
    }
    struct log_ctx ctx;
    ctx_of(c, &ctx);
    log_event(LOG_WARN, "FERRY-1090", &ctx,
              "clients refused ferry's certificate for %s (%llu time(s) in the last %.0f s; "
              "the client must trust ferry's CA): %s", c->mitm->host, slot->since,
              REFUSED_WINDOW, tls_leg_error(&c->cli));
    slot->at = now;
    slot->since = 0;
}

int conn_intercept_tls_failed(struct conn *c)
{
    struct log_ctx ctx;
    ctx_of(c, &ctx);
    if (tls_leg_saw_http(&c->cli)) {
        /* Plain HTTP after the 200: say so in plain HTTP, then close. */
        stats.hs_fail[INTERCEPT_HS_PLAIN_HTTP]++;
        leg_tr_free(&c->cli);
        conn_new_cid(c);
        snprintf(c->method, sizeof(c->method), "-");
        conn_fail(c, FERR_MITM_PLAIN_HTTP);
        return 1;
    }
    const char *why = tls_leg_error(&c->cli);
    c->code = "FERRY-1089";
    if (mint_client_refused(&c->cli)) {
        stats.hs_fail[INTERCEPT_HS_REFUSED]++;
        note_refused(c);
        return 0;
    }
    int sni = strncmp(why, "FERRY-1080", 10) == 0 || strstr(why, "SNI") != NULL;
    int garbage = strstr(why, "wrong version") != NULL || strstr(why, "packet length") != NULL ||
                  strstr(why, "unknown protocol") != NULL;
    stats.hs_fail[sni ? INTERCEPT_HS_SNI : garbage ? INTERCEPT_HS_NOT_TLS
                                                   : INTERCEPT_HS_OTHER]++;
    log_event(LOG_WARN, "FERRY-1089", &ctx,
              "TLS handshake with client %s for intercepted %s:%d failed (%s): %s", c->client,
              c->mitm->host, c->mitm->port, sni ? "server name" : garbage ? "not TLS" : "TLS",
              why[0] ? why : "connection closed");
    return 0;
}

/* host[:port] of a Host header or an authority names the session's host. */
static int names_session(const struct mitm *m, const char *p, size_t n)
{
    size_t hl = n;
    int port = 443;
    const char *colon = memchr(p, ':', n);
    if (colon != NULL && memchr(colon + 1, ':', n - (size_t)(colon - p) - 1) == NULL) {
        hl = (size_t)(colon - p);
        port = 0;
        for (const char *q = colon + 1; q < p + n; q++) {
            if (*q < '0' || *q > '9' || port > 65535) {
                return 0;
            }
            port = port * 10 + (*q - '0');
        }
    }
    return hl == strlen(m->host) && strncasecmp(p, m->host, hl) == 0 &&
           (port == m->port || (colon == NULL && m->port == 443));
}

/* The request target inside: origin-form, or https://host/... for the
 * same host.  Sets c->tpath; 0 ok, -1 answered. */
static int take_target(struct conn *c, const char *base)
{
    struct http_span u = c->req.url;
    if (u.len > 0 && base[u.off] == '/') {
        c->tpath = u;
        return 0;
    }
    struct http_parser_url pu;
    http_parser_url_init(&pu);
    if (c->req.method == HTTP_CONNECT ||
        http_parser_parse_url(base + u.off, u.len, 0, &pu) != 0 ||
        !(pu.field_set & (1 << UF_SCHEMA)) || !(pu.field_set & (1 << UF_HOST))) {
        conn_fail(c, FERR_MITM_TARGET);
        return -1;
    }
    struct http_span sch = { u.off + pu.field_data[UF_SCHEMA].off, pu.field_data[UF_SCHEMA].len };
    if (!http_span_ieq(base, sch, "https") && !http_span_ieq(base, sch, "wss")) {
        conn_fail(c, FERR_MITM_TARGET);
        return -1;
    }
    /* The authority: host and an optional port, as in the URL. */
    uint32_t a_off = pu.field_data[UF_HOST].off;
    uint32_t a_end = a_off + pu.field_data[UF_HOST].len;
    if (pu.field_set & (1 << UF_PORT)) {
        a_end = pu.field_data[UF_PORT].off + pu.field_data[UF_PORT].len;
    }
    if (!names_session(c->mitm, base + u.off + a_off, a_end - a_off)) {
        conn_fail(c, FERR_MITM_MISDIRECTED);
        return -1;
    }
    uint32_t start = a_end, end = u.len;
    uint32_t frag = u.len;
    if (pu.field_set & (1 << UF_FRAGMENT)) {
        frag = (uint32_t)pu.field_data[UF_FRAGMENT].off - 1;
    }
    end = frag < end ? frag : end;
    c->tpath.off = u.off + start;
    c->tpath.len = end > start ? end - start : 0;
    return 0;
}

void conn_intercept_input(struct conn *c)
{
    if (!conn_read_head(c)) {
        return;
    }
    const struct mitm *m = c->mitm;
    const char *base = buf_head(&c->cli.in);
    stats.requests++;
    c->is_connect = 0;
    snprintf(c->host, sizeof(c->host), "%s", m->host);
    c->port = m->port;
    snprintf(c->user, sizeof(c->user), "%s", m->user);
    /* Control parameters (sessions, region, pool) need nothing here: the
     * CONNECT's joined c->ctl_user, which requests inside keep, and each
     * request's own X-Ferry-* headers (conn_read_head) win over them. */
    if (take_target(c, base) < 0) {
        return;
    }
    struct http_span h = c->req.host;
    if (h.len > 0 ? !names_session(m, base + h.off, h.len) : c->req.minor > 0) {
        conn_fail(c, h.len > 0 ? FERR_MITM_MISDIRECTED : FERR_BAD_REQUEST);
        return;
    }
    conn_show_target(c, base);
    c->upgrade = c->req.is_upgrade && c->req.upgrade.len > 0;
    c->deadline = c->t_start + timeouts.request;
    c->head_started = 0;
    conn_intercept_origin(c);
    conn_route(c);
}

const char *const intercept_hs_names[INTERCEPT_HS_REASONS] = {
    "refused", "plain_http", "not_tls", "sni", "other",
};

void conn_intercept_origin(struct conn *c)
{
    c->origin_tls = 1; /* origin_tls.c: tunnel, TLS with SNI and checks, origin form */
}
