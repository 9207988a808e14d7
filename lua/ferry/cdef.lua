-- cdef.lua: the FFI mirror of core/ferry.h, declared once for the
-- whole runtime.  Requiring it twice is harmless.
local ffi = require("ffi")

if not pcall(ffi.typeof, "struct ferry_proxy") then
  ffi.cdef[[
enum ferry_rc { FERRY_OK = 0, FERRY_ERROR = -1 };
enum ferry_log_level { FERRY_LOG_DEBUG = 0, FERRY_LOG_INFO = 1, FERRY_LOG_WARN = 2,
                       FERRY_LOG_ERROR = 3 };
enum ferry_hook_kind { FERRY_HOOK_RUNTIME = 0, FERRY_HOOK_ROUTE = 1, FERRY_HOOK_STRATEGY = 2,
                       FERRY_HOOK_BREAKER = 3, FERRY_HOOK_EXCHANGE = 4 };
enum ferry_dispatch { FERRY_DISPATCH_NO_PROXY = -1, FERRY_DISPATCH_ROUTE_ERROR = -2,
                      FERRY_DISPATCH_DENY = -3, FERRY_DISPATCH_ALL_DOWN = -4,
                      FERRY_DISPATCH_RATE = -5,
                      FERRY_DISPATCH_POOL_REFUSED = -20, FERRY_DISPATCH_POOL_UNKNOWN = -21,
                      FERRY_DISPATCH_NO_REGION = -22, FERRY_DISPATCH_NO_SITE = -30,
                      FERRY_DISPATCH_NOT_BACKENDS = -31 };
enum { FERRY_RETRIES_MAX = 8 };
enum ferry_scheme { FERRY_SCHEME_DIRECT = 0, FERRY_SCHEME_HTTP = 1, FERRY_SCHEME_SOCKS5 = 2,
                   FERRY_SCHEME_HTTPS = 3, FERRY_SCHEME_SOCKS4 = 4, FERRY_SCHEME_SOCKS4A = 5,
                   FERRY_SCHEME_BACKEND = 6, FERRY_SCHEME_BACKEND_TLS = 7,
                   FERRY_SCHEMES = 8 };
enum ferry_fail_kind {
  FERRY_FAIL_REFUSED = 0, FERRY_FAIL_TIMEOUT = 1, FERRY_FAIL_HANDSHAKE = 2,
  FERRY_FAIL_AUTH = 3, FERRY_FAIL_HTTP5XX = 4, FERRY_FAIL_RESET = 5, FERRY_FAIL_TLS = 6,
  FERRY_FAIL_KINDS = 7
};
struct ferry_proxy {
  uint32_t id;
  uint32_t flags;
  int32_t  active;
  uint32_t weight;
  uint32_t consecutive_failures;
  uint32_t scheme;
  uint64_t requests;
  uint64_t successes;
  uint64_t failures;
  uint64_t fail_kind[7];
  double   latency_ewma_ms;
  double   last_failure_at;
  double   last_success_at;
  uint32_t health;
  uint32_t rise;
  uint32_t fall;
  uint32_t probe_kind;
  uint32_t probe_fails;
  uint32_t downs;
  uint64_t probes_ok;
  uint64_t probes_failed;
  double   probe_latency_ms;
  double   last_probe_at;
  double   down_since;
  double   retry_at;
  double   up_since;
};
enum ferry_proxy_flag { FERRY_PROXY_DOWN = 0x1, FERRY_PROXY_DISABLED = 0x2,
                       FERRY_PROXY_REMOVED = 0x4 };
enum ferry_req_flag { FERRY_REQ_CAPTURE = 0x1, FERRY_REQ_TLS = 0x40,
                      FERRY_REQ_INTERCEPT = 0x100, FERRY_REQ_NO_INTERCEPT = 0x200,
                      FERRY_REQ_REVERSE = 0x1000, FERRY_REQ_CLIENT_TLS = 0x2000,
                      FERRY_REQ_QUIET_OK = 0x40000 };
enum ferry_probe_kind { FERRY_PROBE_NONE = 0, FERRY_PROBE_TCP = 1, FERRY_PROBE_HTTP = 2,
                        FERRY_PROBE_CONNECT = 3 };
enum ferry_breaker { FERRY_BREAKER_CLOSED = 0, FERRY_BREAKER_OPEN = 1,
                     FERRY_BREAKER_HALF_OPEN = 2 };
struct ferry_pxstate {
  uint32_t proxy_id;
  uint32_t exchange;
  uint32_t breaker;
  uint32_t trials;
  uint32_t trials_max;
  uint32_t opens;
  uint32_t bans;
  uint32_t consecutive_failures;
  double   rate_tokens;
  double   rate_at;
  uint64_t requests;
  uint64_t successes;
  uint64_t failures;
  uint64_t bans_total;
  double   breaker_until;
  double   trial_at;
  double   banned_until;
  double   last_failure_at;
  double   last_success_at;
  double   latency_ewma_ms;
  double   opened_at;
};
struct ferry_result {
  uint32_t    proxy_id;
  uint32_t    exchange;
  int32_t     pool;
  int32_t     ok;
  int32_t     kind;
  int32_t     status;
  double      latency_ms;
  const char *head; uint32_t head_len;
  const char *body; uint32_t body_len;
  const char *host; uint32_t host_len;
  int32_t     banned;
};
struct ferry_admin_req {
  const char *method;  uint32_t method_len;
  const char *target;  uint32_t target_len;
  const char *head;    uint32_t head_len;
  const char *body;    uint32_t body_len;
  const char *peer;
  const char *listener;
  const char *cid;
  int32_t unix_socket;
};
struct ferry_req {
  const char *host;     uint32_t host_len;
  uint32_t    port;
  const char *method;   uint32_t method_len;
  const char *path;     uint32_t path_len;
  const char *client;   uint32_t client_len;
  const char *user;     uint32_t user_len;
  const char *listener; uint32_t listener_len;
  uint32_t    is_connect;
  uint32_t    attempt;
  uint32_t    ntried;
  uint32_t    tried[FERRY_RETRIES_MAX];
  int32_t     pool;
  int32_t     retries;
  int32_t     connect_timeout_ms;
  int32_t     first_byte_timeout_ms;
  const char *session;  uint32_t session_len;
  const char *head;     uint32_t head_len;
  uint32_t    exchange;
  uint32_t    flags;
  const char *add_headers;  uint32_t add_headers_len;
  const char *drop_headers; uint32_t drop_headers_len;
  double rate_wait;
  const char *region;       uint32_t region_len;
  const char *pool_header;  uint32_t pool_header_len;
  uint32_t    rotate;
  int32_t     ban_retry;
  int32_t     site_pool;
};
double ferry_now(void);
void *ferry_bridge_arg(void);
struct ferry_proxy *ferry_proxy_new(const char *key, int scheme, const char *host, int port,
                                    const char *user, const char *pass,
                                    const char *extra_headers, int weight, const char **err);
struct ferry_proxy *ferry_proxy_get(uint32_t id);
int ferry_proxy_set_flag(struct ferry_proxy *p, uint32_t flag, int on);
uint32_t ferry_proxy_count(void);
int ferry_proxy_set_label(struct ferry_proxy *p, const char *label);
const char *ferry_proxy_label(const struct ferry_proxy *p);
int ferry_proxy_url(const struct ferry_proxy *p, char *out, uint32_t room);
int ferry_proxy_lease(uint32_t id, int delta);
int ferry_proxy_report(uint32_t id, uint32_t exchange, int ok, int kind, double latency_ms);
int ferry_health_set(struct ferry_proxy *p, int rise, int fall, double interval);
int ferry_health_mark(struct ferry_proxy *p, int up, const char *reason);
uint32_t ferry_health_epoch(void);
void ferry_health_started(void);
int ferry_probe_set(struct ferry_proxy *p, int kind, const char *host, int port,
                    const char *path, const char *expect, double interval,
                    double timeout, const char **err);
void ferry_probe_set_concurrency(int n);
int ferry_probe_inflight(void);
int ferry_probe_duty(struct ferry_proxy *p, int here);
int ferry_probe_verdict(const struct ferry_proxy *p);
int ferry_probe_shared(struct ferry_proxy *p, int up, double latency_ms, const char *why);
uint64_t ferry_probe_runs(void);
uint32_t ferry_probe_duties(void);
enum ferry_retry_on { FERRY_RETRY_ON_CONNECT = 0x1, FERRY_RETRY_ON_REFUSED = 0x2,
  FERRY_RETRY_ON_RESET = 0x4, FERRY_RETRY_ON_TIMEOUT = 0x8 };
enum ferry_retry_jitter { FERRY_JITTER_NONE = 0, FERRY_JITTER_EQUAL = 1, FERRY_JITTER_FULL = 2 };
int ferry_pool_retry(int pool, uint32_t on, const uint8_t *statuses, double backoff,
                     double max_backoff, int jitter, double budget, int budget_min);
int ferry_set_pool_name(int index, const char *name);
int ferry_pool_connections(int pool, int max, int queue, double queue_timeout, int idle,
                           double idle_timeout, int max_requests);
struct ferry_conn_stats {
  uint64_t opened, reused, queued, queue_timeouts, queue_full, retired;
  uint32_t active, idle, waiting, pad_;
};
int ferry_conn_stats_proxy(uint32_t id, struct ferry_conn_stats *out);
int ferry_conn_stats_pool(int pool, struct ferry_conn_stats *out);
uint64_t ferry_conn_idle_evicted(void);
const char *ferry_pool_name(int index);
uint32_t ferry_exchange_id(const char *name);
struct ferry_pxstate *ferry_pxstate_get(uint32_t proxy_id, uint32_t exchange);
void ferry_pxstate_window(const struct ferry_pxstate *x, int seconds, uint32_t *out);
int ferry_breaker_open(struct ferry_pxstate *x, double seconds);
int ferry_breaker_half_open(struct ferry_pxstate *x, int trials);
int ferry_breaker_close(struct ferry_pxstate *x);
int ferry_breaker_trial(struct ferry_pxstate *x);
int ferry_ban(struct ferry_pxstate *x, double seconds, const char *reason);
int ferry_rate_set(uint32_t exchange, double limit, double per, double burst, int queue,
                   double queue_timeout);
int ferry_rate_take(struct ferry_pxstate *x, double weight);
int ferry_rate_learn(struct ferry_pxstate *x, double max, double until);
double ferry_rate_tokens(const struct ferry_pxstate *x);
struct ferry_rate_stats {
  uint64_t waited;
  uint64_t rejected;
  uint64_t learned;
  uint32_t waiting;
  uint32_t queue;
  double   limit;
  double   per;
  double   capacity;
};
int ferry_rate_stats(uint32_t exchange, struct ferry_rate_stats *out);
uint32_t ferry_sticky_get(const char *key, uint32_t len);
int ferry_sticky_set(const char *key, uint32_t len, uint32_t proxy_id, double ttl);
void ferry_sticky_drop(const char *key, uint32_t len);
uint32_t ferry_sticky_count(void);
int ferry_store_open(const char *path, const char **err);
int ferry_store_open_key(const char *path, const char *key, size_t key_len, const char **err);
void ferry_store_close(void);
int ferry_store_is_open(void);
int ferry_store_put_proxy(const char *key, const char *url, const char *pool,
                          const char *opts_json, int enabled, const char **err);
int ferry_store_delete_proxy(const char *key, const char **err);
int ferry_store_set_enabled(const char *key, int enabled, const char **err);
const char *ferry_store_proxies_json(const char **err);
int ferry_store_save_health(const char **err);
int ferry_store_load_health(const char **err);
int ferry_secret_equal(const char *a, size_t alen, const char *b, size_t blen);
int ferry_secret_hmac(const char *key, size_t klen, const char *data, size_t n,
                      unsigned char *out);
char *ferry_secret_seal_text(const char *key, size_t key_len, const char *plain,
                             int deterministic);
int ferry_secret_open_text(const char *key, size_t key_len, const char *sealed, char **plain);
int ferry_secret_is_sealed(const char *s);
void ferry_secret_free(char *p);
enum { FERRY_ADMIN_WAIT_MAX = 32 };
int ferry_admin_answer(double token, int status, const char *ctype, const char *body,
                       size_t blen, const char *headers);
int ferry_admin_wait_room(void);
int ferry_listen(const char *name, const char *host, int port, const char *protocol,
                 int open, const char **err);
int ferry_listener_add_user(int listener, const char *user, const char *pass, const char **err);
int ferry_listener_find(const char *host, int port);
int ferry_listener_set_auth_throttle(int listener, int limit, double window);
int ferry_listen_unix(const char *name, const char *path, const char **err);
int ferry_listener_find_unix(const char *path);
int ferry_listener_is_admin(int listener);
int ferry_listener_reset(int listener, const char *name, int open);
int ferry_listener_set_protocol(int listener, const char *protocol);
int ferry_listener_close(int listener);
void *ferry_tls_server_new(const char *cert, const char *key, const char **err);
void ferry_tls_ctx_free(void *ctx);
int ferry_listener_set_tls(int listener, void *ctx);
void *ferry_ca_load(const char *cert, const char *key, const char **err);
void ferry_ca_release(void *ca);
int ferry_ca_use(void *ca, int leaf_cache, const char **err);
struct ferry_mint_stats {
    uint64_t minted, hits, evictions, refused, sni_mismatch, failed;
    uint32_t cached, cap;
    int ready;
};
void ferry_mint_stats(struct ferry_mint_stats *out);
int ferry_proxy_set_tls(struct ferry_proxy *p, int verify, const char *ca, const char *sni,
                        const char **err);
void *ferry_origin_tls_ctx(int verify, const char *ca, const char **err);
int ferry_exchange_set_tls(uint32_t exchange, void *ctx, int verify, const char *sni);
void ferry_origin_tls_sweep(void);
void ferry_origin_tls_stats(uint64_t *handshakes, uint64_t *reuses, uint64_t *verify_failures);
void ferry_set_timeouts(int client_head_ms, int connect_ms, int first_byte_ms, int idle_ms,
                        int keepalive_ms, int request_ms, int upstream_idle_ms);
int ferry_set_log_files(const char *events, const char *access, const char **err);
void ferry_set_http(int via, const char *via_name);
enum ferry_fwd { FERRY_FWD_FOR = 0x1, FERRY_FWD_PROTO = 0x2, FERRY_FWD_HOST = 0x4,
                 FERRY_FWD_VIA = 0x8 };
int ferry_listener_set_reverse(int listener, int pool, unsigned forwarded, int trust);
int ferry_pool_set_host(int pool, const char *host);
int ferry_draining(void);
const char *ferry_config_path(void);
const char *ferry_version_string(void);
int ferry_budget_charge(double instructions);
const char *ferry_budget_message(void);
const char *ferry_budget_tripped(void);
void ferry_budget_enter_load(void);
int ferry_path_writable(const char *path, const char **err);
int ferry_socket_path_usable(const char *path, const char **err);
void ferry_set_log(int level, int access);
int32_t ferry_timer_start(double after, double every, const char **err);
void ferry_timer_cancel(int32_t id);
int ferry_timer_count(void);
enum ferry_pg_state { FERRY_PG_OFF = 0, FERRY_PG_CONNECTING = 1, FERRY_PG_UP = 2,
                      FERRY_PG_DOWN = 3 };
enum ferry_pg_event { FERRY_PG_EV_UP = 1, FERRY_PG_EV_DOWN = 2, FERRY_PG_EV_RESULT = 3,
                      FERRY_PG_EV_NOTIFY = 4 };
enum ferry_pg_result { FERRY_PG_RES_NONE = 0, FERRY_PG_RES_OK = 1, FERRY_PG_RES_ROWS = 2,
                       FERRY_PG_RES_ERROR = 3 };
struct ferry_pg_stats {
  uint64_t connects;
  uint64_t reconnects;
  uint64_t queries;
  uint64_t errors;
  uint64_t notifies;
  double   up_since;
  double   down_since;
  double   attempts;
  double   timeout;
  int32_t  state;
  int32_t  inflight;
};
int ferry_pg_check(const char *conninfo, const char **err);
int ferry_pg_configure(const char *conninfo, double timeout, const char **err);
int ferry_pg_state(void);
int ferry_pg_send(const char *sql, int nparams, const char *const *values, const char **err);
int ferry_pg_busy(void);
const char *ferry_pg_target(void);
const char *ferry_pg_error(void);
int ferry_pg_result_status(void);
const char *ferry_pg_result_error(void);
const char *ferry_pg_result_sqlstate(void);
int ferry_pg_nrows(void);
int ferry_pg_nfields(void);
const char *ferry_pg_fname(int col);
const char *ferry_pg_value(int row, int col, int *len);
double ferry_pg_affected(void);
const char *ferry_pg_notify_channel(void);
const char *ferry_pg_notify_payload(void);
void ferry_pg_stats(struct ferry_pg_stats *out);
void ferry_log(int level, const char *code, const char *msg);
void ferry_count_hook_error(int kind);
struct ferry_metrics_member {
  const struct ferry_proxy *proxy;
  const char *label;
  int32_t     pool;
  double      score;
};
void ferry_metrics_count_request(const char *listener, int pool, uint32_t exchange,
                                 const char *code, int status, double seconds);
void ferry_metrics_count_reload(int ok);
void ferry_metrics_set_limit(uint32_t max_series);
const char *ferry_metrics_text(const struct ferry_metrics_member *members, uint32_t n,
                               const char *extra, size_t *len);
/* The HTTP cache (cache.c, conn_cache.c): one store per pool or listener
 * that configures `cache = { size, max_object, ttl, lock_timeout }`. */
enum ferry_cache_kind {
    FERRY_CACHE_POOL = 0,
    FERRY_CACHE_LISTENER = 1
};
struct ferry_cache_stats {
    uint64_t hits;           /* ro: answered fresh from the store */
    uint64_t misses;         /* ro: went upstream with nothing usable stored */
    uint64_t stale;          /* ro: answered stale (stale-if-error, stale-while-revalidate) */
    uint64_t revalidated;    /* ro: a stored entry confirmed by a 304 */
    uint64_t coalesced;      /* ro: misses that waited for another request's fill */
    uint64_t evictions;      /* ro: entries dropped for room */
    uint64_t stored;         /* ro: entries stored */
    uint64_t purged;         /* ro: entries dropped by purge or invalidation */
    uint64_t too_large;      /* ro: responses over max_object, relayed, not stored */
    uint64_t bypass;         /* ro: requests the cache did not take (method, no-store...) */
    uint64_t bytes;          /* ro: bytes held now (entries, keys, heads, bodies) */
    uint64_t entries;        /* ro: entries held now */
    uint64_t size;           /* ro: the byte bound */
    uint64_t max_object;     /* ro: the largest body stored */
    uint64_t filling;        /* ro: bytes the fills under way hold now (at most size) */
    uint64_t fill_refused;   /* ro: fills given up because the fills under way held size */
};
/* A reload starts: caches set again before ferry_cache_reload_end stay
 * (with their entries), the others are dropped. */
void ferry_cache_reload_begin(void);
void ferry_cache_reload_end(void);
/* The cache of a pool (kind POOL, index: pool index) or a listener (kind
 * LISTENER, name: the listener's); a smaller size evicts at once. */
int ferry_cache_set(int kind, const char *name, int index, double size, double max_object,
                    double ttl, double lock_timeout);
/* Caches now, and one of them by position (0..): its name, kind, counters. */
int ferry_cache_count(void);
int ferry_cache_info(int i, struct ferry_cache_stats *out, const char **name, int *kind);
/* Drop the entries whose key starts with prefix ("" all; "/x" the target
 * /x... of any host) in the cache named name (NULL: every cache);
 * returns how many went. */
double ferry_cache_purge(const char *name, const char *prefix);
/* 1 when the config has no route(): a reverse listener's own pool then
 * serves every request, and its cache answers before any Lua runs. */
void ferry_cache_fixed_sites(int on);
]]
end

-- The constants of ferry.h as Lua numbers, read from the declarations
-- above: Lua never spells one of them as a literal.
local C = ffi.C
local function n(v) return tonumber(v) end

local M = {
  OK = n(C.FERRY_OK), ERROR = n(C.FERRY_ERROR),
  LOG = { debug = n(C.FERRY_LOG_DEBUG), info = n(C.FERRY_LOG_INFO), warn = n(C.FERRY_LOG_WARN),
          error = n(C.FERRY_LOG_ERROR) },
  HOOK = { runtime = n(C.FERRY_HOOK_RUNTIME), route = n(C.FERRY_HOOK_ROUTE),
           strategy = n(C.FERRY_HOOK_STRATEGY), breaker = n(C.FERRY_HOOK_BREAKER),
           exchange = n(C.FERRY_HOOK_EXCHANGE) },
  DISPATCH = { no_proxy = n(C.FERRY_DISPATCH_NO_PROXY), route_error = n(C.FERRY_DISPATCH_ROUTE_ERROR),
               deny = n(C.FERRY_DISPATCH_DENY), all_down = n(C.FERRY_DISPATCH_ALL_DOWN),
               rate = n(C.FERRY_DISPATCH_RATE),
               pool_refused = n(C.FERRY_DISPATCH_POOL_REFUSED),
               pool_unknown = n(C.FERRY_DISPATCH_POOL_UNKNOWN),
               no_region = n(C.FERRY_DISPATCH_NO_REGION),
               no_site = n(C.FERRY_DISPATCH_NO_SITE),
               not_backends = n(C.FERRY_DISPATCH_NOT_BACKENDS) },
  RETRIES_MAX = n(C.FERRY_RETRIES_MAX),
  PROXY_DOWN = n(C.FERRY_PROXY_DOWN),
  PROXY_DISABLED = n(C.FERRY_PROXY_DISABLED),
  PROXY_REMOVED = n(C.FERRY_PROXY_REMOVED),
  SCHEME = { direct = n(C.FERRY_SCHEME_DIRECT), http = n(C.FERRY_SCHEME_HTTP),
             socks5 = n(C.FERRY_SCHEME_SOCKS5), https = n(C.FERRY_SCHEME_HTTPS),
             socks4 = n(C.FERRY_SCHEME_SOCKS4), socks4a = n(C.FERRY_SCHEME_SOCKS4A),
             backend = n(C.FERRY_SCHEME_BACKEND), backend_tls = n(C.FERRY_SCHEME_BACKEND_TLS) },
  PROBE = { none = n(C.FERRY_PROBE_NONE), tcp = n(C.FERRY_PROBE_TCP),
            http = n(C.FERRY_PROBE_HTTP), connect = n(C.FERRY_PROBE_CONNECT) },
  BREAKER_CLOSED = n(C.FERRY_BREAKER_CLOSED), BREAKER_OPEN = n(C.FERRY_BREAKER_OPEN),
  BREAKER_HALF_OPEN = n(C.FERRY_BREAKER_HALF_OPEN),
  REQ_CAPTURE = n(C.FERRY_REQ_CAPTURE),
  REQ_INTERCEPT = n(C.FERRY_REQ_INTERCEPT), REQ_NO_INTERCEPT = n(C.FERRY_REQ_NO_INTERCEPT),
  REQ_TLS = n(C.FERRY_REQ_TLS),
  REQ_REVERSE = n(C.FERRY_REQ_REVERSE), REQ_CLIENT_TLS = n(C.FERRY_REQ_CLIENT_TLS),
  REQ_QUIET_OK = n(C.FERRY_REQ_QUIET_OK),
  FWD = { ["for"] = n(C.FERRY_FWD_FOR), proto = n(C.FERRY_FWD_PROTO), host = n(C.FERRY_FWD_HOST),
          via = n(C.FERRY_FWD_VIA) },
  -- Names of enum ferry_fail_kind, index = value + 1.
  FAIL_KINDS = { "refused", "timeout", "handshake", "auth", "http5xx", "reset", "tls" },
}
assert(#M.FAIL_KINDS == n(C.FERRY_FAIL_KINDS), "cdef: FAIL_KINDS out of step with ferry.h")

return M
