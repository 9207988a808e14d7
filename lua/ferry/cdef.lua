-- cdef.lua: the FFI mirror of core/ferry.h, declared once for the
-- whole runtime.  Requiring it twice is harmless.
local ffi = require("ffi")

if not pcall(ffi.typeof, "struct ferry_proxy") then
  ffi.cdef[[
enum ferry_scheme { FERRY_SCHEME_DIRECT = 0, FERRY_SCHEME_HTTP = 1, FERRY_SCHEME_SOCKS5 = 2 };
enum ferry_fail_kind {
  FERRY_FAIL_REFUSED = 0, FERRY_FAIL_TIMEOUT = 1, FERRY_FAIL_HANDSHAKE = 2,
  FERRY_FAIL_AUTH = 3, FERRY_FAIL_HTTP5XX = 4, FERRY_FAIL_RESET = 5, FERRY_FAIL_KINDS = 6
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
  uint64_t fail_kind[6];
  double   latency_ewma_ms;
  double   last_failure_at;
  double   last_success_at;
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
  uint32_t    tried[8];
  int32_t     pool;
  int32_t     retries;
  int32_t     connect_timeout_ms;
  int32_t     first_byte_timeout_ms;
};
double ferry_now(void);
struct ferry_proxy *ferry_proxy_new(const char *key, int scheme, const char *host, int port,
                                    const char *user, const char *pass,
                                    const char *extra_headers, int weight, const char **err);
struct ferry_proxy *ferry_proxy_get(uint32_t id);
int ferry_proxy_set_flag(struct ferry_proxy *p, uint32_t flag, int on);
uint32_t ferry_proxy_count(void);
int ferry_listen(const char *name, const char *host, int port, const char *protocol,
                 int open, const char **err);
int ferry_listener_add_user(int listener, const char *user, const char *pass, const char **err);
void ferry_set_timeouts(int client_head_ms, int connect_ms, int first_byte_ms, int idle_ms,
                        int keepalive_ms, int request_ms);
void ferry_set_log(int level, int access);
void ferry_log(int level, const char *code, const char *msg);
void ferry_count_hook_error(int kind);
]]
end

local M = {
  PROXY_DOWN = 0x1,
  PROXY_DISABLED = 0x2,
  PROXY_REMOVED = 0x4,
  SCHEME = { direct = 0, http = 1, socks5 = 2 },
  FAIL_KINDS = { "refused", "timeout", "handshake", "auth", "http5xx", "reset" },
}

return M
