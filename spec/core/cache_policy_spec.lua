-- The HTTP cache rules (core/cache_policy*.c, RFC 9111 / RFC 9110) through
-- FFI on build/libferry.so: Cache-Control of responses and requests,
-- HTTP-date in its three forms, what is stored and for how long, age
-- arithmetic, what a stored entry may serve, Vary keys, entity-tags and
-- conditional requests, validators, 304 merging and invalidation.
local ffi = require("ffi")

ffi.cdef[[
struct http_span { uint32_t off; uint32_t len; };
struct http_field { struct http_span name; struct http_span value; unsigned hop:1; };
struct cpol_head { const char *base; const struct http_field *fields; unsigned nfields; };

const char *cpol_head_get(const struct cpol_head *h, const char *name, size_t *len);
unsigned cpol_head_count(const struct cpol_head *h, const char *name);
int cpol_delta_parse(const char *s, size_t n, double *d);
struct cpol_elem {
  const char *name; size_t name_len; const char *arg; size_t arg_len;
  unsigned has_arg:1, quoted:1, bad:1;
};
int cpol_list_next(const char *v, size_t n, size_t *pos, struct cpol_elem *e);

int cpol_date_parse(const char *s, size_t n, double now, double *t);
size_t cpol_date_format(double t, char *out);

struct cpol_resp_cc {
  double max_age, s_maxage, swr, sie;
  unsigned present:1, no_store:1, no_cache:1, private_:1, public_:1, must_revalidate:1,
           proxy_revalidate:1, immutable:1, no_transform:1, swr_bad:1, sie_bad:1;
};
struct cpol_req_cc {
  double max_age, max_stale, min_fresh, sie;
  unsigned present:1, no_cache:1, no_store:1, only_if_cached:1, no_transform:1,
           max_stale_bad:1, min_fresh_bad:1, sie_bad:1;
};
void cpol_resp_cc_init(struct cpol_resp_cc *cc);
void cpol_req_cc_init(struct cpol_req_cc *cc);
void cpol_resp_cc_add(struct cpol_resp_cc *cc, const char *value, size_t n);
void cpol_req_cc_add(struct cpol_req_cc *cc, const char *value, size_t n);
void cpol_resp_cc_parse(const struct cpol_head *h, struct cpol_resp_cc *cc);
void cpol_req_cc_parse(const struct cpol_head *h, struct cpol_req_cc *cc);

struct cpol_req {
  struct cpol_req_cc cc; int method; double ims;
  unsigned authorization:1, has_inm:1, has_ims:1;
};
struct cpol_resp {
  struct cpol_resp_cc cc; int status; double date, expires, age, last_modified;
  unsigned has_date:1, has_expires:1, has_age:1, has_last_modified:1, has_etag:1,
           set_cookie:1, vary_star:1, explicit_fresh:1;
};
void cpol_req_parse(const struct cpol_head *h, int method, double now, struct cpol_req *r);
void cpol_resp_parse(const struct cpol_head *h, int status, double now, struct cpol_resp *r);

struct cpol_entry {
  double request_time, response_time, corrected_initial_age, lifetime, swr, sie,
         last_modified, date;
  unsigned has_last_modified:1, no_cache:1, must_revalidate:1, has_etag:1, immutable:1,
           ttl_rule:1;
};
int cpol_entry_init(struct cpol_entry *e, const struct cpol_req *rq, const struct cpol_resp *rs,
                    const struct cpol_head *resp_head, double request_time,
                    double response_time, double ttl);
const char *cpol_store_name(int s);
int cpol_status_heuristic(int status);
double cpol_entry_age(const struct cpol_entry *e, double now);
int64_t cpol_age_header(const struct cpol_entry *e, double now);
double cpol_entry_ttl(const struct cpol_entry *e, double now);
int cpol_serve(const struct cpol_entry *e, const struct cpol_req *rq, double now);
const char *cpol_serve_name(int s);
int cpol_stale_on_error(const struct cpol_entry *e, const struct cpol_req *rq, double now);
int cpol_status_is_failure(int status);

struct cpol_vary { unsigned n; unsigned star:1, overflow:1; char names[16][64]; };
int cpol_vary_parse(const struct cpol_head *resp, struct cpol_vary *v);
long cpol_vary_key(const struct cpol_vary *v, const struct cpol_head *req, char *out, size_t cap);
int cpol_vary_match(const struct cpol_vary *v, const struct cpol_head *a, const struct cpol_head *b);

int cpol_etag_weak_eq(const char *a, size_t an, const char *b, size_t bn);
int cpol_etag_strong_eq(const char *a, size_t an, const char *b, size_t bn);
int cpol_inm_matches(const struct cpol_head *req, const char *etag, size_t etag_len);
int cpol_conditional(const struct cpol_req *rq, const struct cpol_head *req,
                     const struct cpol_head *stored_resp, double now);
int cpol_field_in_304(const char *name, size_t n);
long cpol_validators(const struct cpol_head *stored_resp, char *out, size_t cap);
int cpol_field_conditional(const char *name, size_t n);
int cpol_304_selects(const struct cpol_head *stored_resp, const struct cpol_head *resp304);
long cpol_merge_304(const struct cpol_head *stored, const struct cpol_head *resp304,
                    char *out, size_t cap);
int cpol_field_updatable(const char *name, size_t n);
int cpol_field_storable(const char *name, size_t n);
int cpol_invalidates(int method, int status);
int cpol_same_host_uri(const char *value, size_t n, const char *host, size_t host_len,
                       size_t *off, size_t *len);
const char *cpol_xcache_name(int x);
]]

local core = ffi.load("./build/libferry.so")

local GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE = 1, 2, 3, 4, 0, 6, 7
local ABSENT, DELTA_MAX = -1, 2147483648
-- Store verdicts and serve decisions, as the header numbers them.
local STORE = { store = 0, method = 1, status = 2, no_store = 3, private = 4, auth = 5,
                cookie = 6, vary = 7, freshness = 8 }
local SERVE = { fresh = 0, stale = 1, stale_bg = 2, revalidate = 3, oic_fail = 4 }
local FULL, NOT_MODIFIED = 0, 1

local NOW = 1796169600 -- Wed, 02 Dec 2026 00:00:00 GMT
local NOV94 = 784111777 -- Sun, 06 Nov 1994 08:49:37 GMT

-- A head from a list of { name, value } pairs; the strings stay anchored
-- in the returned table for as long as the head is used.
local function head(list)
  local parts, fields = {}, ffi.new("struct http_field[?]", math.max(#list, 1))
  local off = 0
  for i, f in ipairs(list) do
    fields[i - 1].name.off, fields[i - 1].name.len = off, #f[1]
    off = off + #f[1]
    fields[i - 1].value.off, fields[i - 1].value.len = off, #f[2]
    off = off + #f[2]
    fields[i - 1].hop = f.hop and 1 or 0
    parts[#parts + 1] = f[1] .. f[2]
  end
  local base = table.concat(parts)
  local h = ffi.new("struct cpol_head")
  h.base, h.fields, h.nfields = base, fields, #list
  return { h = h, base = base, fields = fields }
end

local function date(s, now)
  local t = ffi.new("double[1]")
  if core.cpol_date_parse(s, #s, now or NOW, t) ~= 0 then return nil end
  return tonumber(t[0])
end

local function fmt(t)
  local out = ffi.new("char[30]")
  assert.equal(29, tonumber(core.cpol_date_format(t, out)))
  return ffi.string(out)
end

local function resp_cc(...)
  local cc = ffi.new("struct cpol_resp_cc")
  core.cpol_resp_cc_init(cc)
  for _, line in ipairs({ ... }) do core.cpol_resp_cc_add(cc, line, #line) end
  return cc
end

local function req_cc(list)
  local cc = ffi.new("struct cpol_req_cc")
  local hd = head(list)
  core.cpol_req_cc_parse(hd.h, cc)
  return cc
end

local function request(list, method, now)
  local hd = head(list)
  local r = ffi.new("struct cpol_req")
  core.cpol_req_parse(hd.h, method or GET, now or NOW, r)
  return r, hd
end

local function response(list, status, now)
  local hd = head(list)
  local r = ffi.new("struct cpol_resp")
  core.cpol_resp_parse(hd.h, status or 200, now or NOW, r)
  return r, hd
end

-- Store a response: verdict, entry.  t0 the request time, t1 the response time.
local function store(resp_list, opts)
  opts = opts or {}
  local rq = request(opts.req or {}, opts.method or GET)
  local rs, rh = response(resp_list, opts.status or 200)
  local e = ffi.new("struct cpol_entry")
  local t0 = opts.t0 or NOW
  local v = core.cpol_entry_init(e, rq, rs, rh.h, t0, opts.t1 or t0, opts.ttl or 0)
  return v, e
end

local function serve(e, req_list, now)
  local rq = request(req_list or {})
  return core.cpol_serve(e, rq, now)
end

local DATE_NOW = "Wed, 02 Dec 2026 00:00:00 GMT"

describe("HTTP-date", function()
  it("reads the three forms of RFC 9110's example to the same instant", function()
    assert.equal(NOV94, date("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.equal(NOV94, date("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.equal(NOV94, date("Sun Nov  6 08:49:37 1994"))
    assert.equal(785062177, date("Thu Nov 17 08:49:37 1994"))
  end)

  it("allows whitespace around the value, nothing else", function()
    assert.equal(NOV94, date("  Sun, 06 Nov 1994 08:49:37 GMT\t"))
    assert.is_nil(date("Sun, 06 Nov 1994 08:49:37 GMT x"))
    assert.is_nil(date("xSun, 06 Nov 1994 08:49:37 GMT"))
  end)

  it("knows leap years and the epoch", function()
    assert.equal(1709164800, date("Thu, 29 Feb 2024 00:00:00 GMT"))
    assert.is_nil(date("Wed, 29 Feb 2023 00:00:00 GMT"))
    assert.equal(0, date("Thu, 01 Jan 1970 00:00:00 GMT"))
    assert.equal(-1, date("Wed, 31 Dec 1969 23:59:59 GMT"))
    assert.equal(NOW, date(DATE_NOW))
  end)

  for what, s in pairs({
    ["the value 0"] = "0",
    ["an empty value"] = "",
    ["a wrong day name"] = "Mon, 06 Nov 1994 08:49:37 GMT",
    ["a zone other than GMT"] = "Sun, 06 Nov 1994 08:49:37 UTC",
    ["a one-digit day"] = "Sun, 6 Nov 1994 08:49:37 GMT",
    ["a two-digit year in IMF-fixdate"] = "Sun, 06 Nov 94 08:49:37 GMT",
    ["hour 24"] = "Sun, 06 Nov 1994 24:00:00 GMT",
    ["minute 60"] = "Sun, 06 Nov 1994 08:60:00 GMT",
    ["February 30"] = "Thu, 30 Feb 2012 00:00:00 GMT",
    ["a lowercase month"] = "Sun, 06 nov 1994 08:49:37 GMT",
    ["a lowercase day name"] = "sun, 06 Nov 1994 08:49:37 GMT",
    ["a short day name in RFC 850"] = "Sun, 06-Nov-94 08:49:37 GMT",
    ["a four-digit year in RFC 850"] = "Sunday, 06-Nov-1994 08:49:37 GMT",
    ["asctime with a zone"] = "Sun Nov  6 08:49:37 1994 GMT",
    ["asctime with a two-digit year"] = "Sun Nov  6 08:49:37 94",
    ["an ISO date"] = "1994-11-06T08:49:37Z",
    ["a truncated date"] = "Sun, 06 Nov 1994 08:49",
  }) do
    it("refuses " .. what, function()
      assert.is_nil(date(s))
    end)
  end

  it("takes a two-digit year more than 50 years ahead in the past century", function()
    assert.equal(915148800, date("Friday, 01-Jan-99 00:00:00 GMT"))
    -- 44 years ahead of 2026 is within the window.
    assert.equal(3155760000, date("Wednesday, 01-Jan-70 00:00:00 GMT"))
    -- The day name must fit the year chosen (1 Jan 1970 was a Thursday).
    assert.is_nil(date("Thursday, 01-Jan-70 00:00:00 GMT"))
    -- In 1994, "70" is 1970 (76 years ahead would be too many).
    assert.equal(0, date("Thursday, 01-Jan-70 00:00:00 GMT", NOV94))
  end)

  it("formats IMF-fixdate and reads it back to the second", function()
    assert.equal("Sun, 06 Nov 1994 08:49:37 GMT", fmt(NOV94))
    assert.equal("Thu, 01 Jan 1970 00:00:00 GMT", fmt(0))
    assert.equal("Wed, 31 Dec 1969 23:59:59 GMT", fmt(-1))
    assert.equal("Sun, 06 Nov 1994 08:49:37 GMT", fmt(NOV94 + 0.99))
    assert.equal("Fri, 31 Dec 9999 23:59:59 GMT", fmt(1e300))
    assert.equal("Mon, 01 Jan 0001 00:00:00 GMT", fmt(-1e300))
    assert.equal("Thu, 01 Jan 1970 00:00:00 GMT", fmt(0 / 0))
    for _, t in ipairs({ 0, 1, NOV94, NOW, 951782400, 4107542400, -2208988800, 253402300799,
                         -62135596800, 1709164800 - 1 }) do
      assert.equal(t, date(fmt(t)))
    end
  end)
end)

describe("response Cache-Control", function()
  it("reads every directive", function()
    local cc = resp_cc("public, max-age=60, s-maxage=30, must-revalidate, proxy-revalidate",
      "stale-while-revalidate=10, stale-if-error=20, immutable, no-transform")
    assert.equal(1, cc.present)
    assert.equal(60, cc.max_age)
    assert.equal(30, cc.s_maxage)
    assert.equal(10, cc.swr)
    assert.equal(20, cc.sie)
    assert.equal(1, cc.public_)
    assert.equal(1, cc.must_revalidate)
    assert.equal(1, cc.proxy_revalidate)
    assert.equal(1, cc.immutable)
    assert.equal(1, cc.no_transform)
    assert.equal(0, cc.no_store)
    assert.equal(0, cc.no_cache)
    assert.equal(0, cc.private_)
    local cc2 = resp_cc("no-store", "no-cache, private")
    assert.equal(1, cc2.no_store)
    assert.equal(1, cc2.no_cache)
    assert.equal(1, cc2.private_)
    assert.equal(ABSENT, cc2.max_age)
    assert.equal(ABSENT, cc2.s_maxage)
    assert.equal(ABSENT, cc2.swr)
  end)

  it("compares names case-insensitively and accepts quoted arguments", function()
    local cc = resp_cc('MAX-AGE="60", No-Store, S-MaxAge=5')
    assert.equal(60, cc.max_age)
    assert.equal(5, cc.s_maxage)
    assert.equal(1, cc.no_store)
  end)

  it("reads no-cache and private with a field list as their plain forms", function()
    local cc = resp_cc('no-cache="Set-Cookie, X-Foo", private="Authorization"')
    assert.equal(1, cc.no_cache)
    assert.equal(1, cc.private_)
  end)

  it("ignores unknown directives, even with quoted commas in them", function()
    local cc = resp_cc('foo=bar, ext="a, max-age=1, no-store", max-age=9, x-y')
    assert.equal(9, cc.max_age)
    assert.equal(0, cc.no_store)
  end)

  it("makes an invalid or valueless max-age / s-maxage stale (0)", function()
    assert.equal(0, resp_cc("max-age=abc").max_age)
    assert.equal(0, resp_cc("max-age").max_age)
    assert.equal(0, resp_cc("max-age=").max_age)
    assert.equal(0, resp_cc("max-age=-5").max_age)
    assert.equal(0, resp_cc("max-age=5 6").max_age)
    assert.equal(0, resp_cc('max-age="5').max_age)
    assert.equal(0, resp_cc("s-maxage=1.5").s_maxage)
  end)

  it("keeps the smaller of repeated values, across lines too", function()
    assert.equal(30, resp_cc("max-age=60, max-age=30").max_age)
    assert.equal(30, resp_cc("max-age=30", "max-age=60").max_age)
    assert.equal(0, resp_cc("max-age=60", "max-age=x").max_age)
  end)

  it("takes values too large to represent as 2^31", function()
    assert.equal(DELTA_MAX, resp_cc("max-age=99999999999999999999999").max_age)
    assert.equal(DELTA_MAX, resp_cc("max-age=2147483648").max_age)
    assert.equal(2147483647, resp_cc("max-age=2147483647").max_age)
  end)

  it("disables stale-while-revalidate / stale-if-error when one is invalid", function()
    assert.equal(ABSENT, resp_cc("stale-while-revalidate").swr)
    assert.equal(ABSENT, resp_cc("stale-while-revalidate=x").swr)
    assert.equal(ABSENT, resp_cc("stale-if-error=30", "stale-if-error=").sie)
    assert.equal(ABSENT, resp_cc("stale-if-error=", "stale-if-error=30").sie)
    assert.equal(5, resp_cc("stale-if-error=30, stale-if-error=5").sie)
  end)

  it("counts restricting directives even when malformed, public only when well-formed", function()
    local cc = resp_cc("no-store junk, must-revalidate=1, public=1, immutable x")
    assert.equal(1, cc.no_store)
    assert.equal(1, cc.must_revalidate)
    assert.equal(0, cc.public_)
    assert.equal(0, cc.immutable)
  end)

  it("survives empty elements and whitespace", function()
    local cc = resp_cc(" , ,max-age=5 ,, \t public  ,")
    assert.equal(5, cc.max_age)
    assert.equal(1, cc.public_)
  end)

  it("reads every Cache-Control line of a head", function()
    local _, hd = response({ { "cache-control", "max-age=10" }, { "X", "max-age=1" },
                             { "CACHE-CONTROL", "no-cache" } })
    local cc = ffi.new("struct cpol_resp_cc")
    core.cpol_resp_cc_parse(hd.h, cc)
    assert.equal(10, cc.max_age)
    assert.equal(1, cc.no_cache)
  end)
end)

describe("request Cache-Control", function()
  it("reads max-age, max-stale, min-fresh, no-cache, no-store, only-if-cached", function()
    local cc = req_cc({ { "Cache-Control", "max-age=5, max-stale=7, min-fresh=3" },
                        { "Cache-Control", "no-cache, no-store, only-if-cached, stale-if-error=9" } })
    assert.equal(5, cc.max_age)
    assert.equal(7, cc.max_stale)
    assert.equal(3, cc.min_fresh)
    assert.equal(9, cc.sie)
    assert.equal(1, cc.no_cache)
    assert.equal(1, cc.no_store)
    assert.equal(1, cc.only_if_cached)
  end)

  it("reads max-stale without a value as any staleness", function()
    assert.equal(DELTA_MAX, req_cc({ { "Cache-Control", "max-stale" } }).max_stale)
    assert.equal(10, req_cc({ { "Cache-Control", "max-stale, max-stale=10" } }).max_stale)
  end)

  it("ignores an invalid max-stale or min-fresh, makes an invalid max-age 0", function()
    local cc = req_cc({ { "Cache-Control", "max-stale=x, min-fresh=, max-age=y" } })
    assert.equal(ABSENT, cc.max_stale)
    assert.equal(ABSENT, cc.min_fresh)
    assert.equal(0, cc.max_age)
    assert.equal(ABSENT, req_cc({ { "Cache-Control", "max-stale=5, max-stale=z" } }).max_stale)
  end)

  it("keeps the larger min-fresh", function()
    assert.equal(20, req_cc({ { "Cache-Control", "min-fresh=5, min-fresh=20" } }).min_fresh)
  end)

  it("takes Pragma: no-cache only without Cache-Control", function()
    assert.equal(1, req_cc({ { "Pragma", "no-cache" } }).no_cache)
    assert.equal(1, req_cc({ { "pragma", "foo, NO-CACHE" } }).no_cache)
    assert.equal(0, req_cc({ { "Pragma", "no-cache" }, { "Cache-Control", "max-age=5" } }).no_cache)
    assert.equal(0, req_cc({ { "Pragma", "no-cachex" } }).no_cache)
    assert.equal(0, req_cc({}).no_cache)
    assert.equal(0, req_cc({}).present)
  end)
end)

describe("reading a request and a response", function()
  it("notes Authorization, If-None-Match and a valid If-Modified-Since", function()
    local r = request({ { "Authorization", "Basic x" },
                        { "If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT" } })
    assert.equal(1, r.authorization)
    assert.equal(0, r.has_inm)
    assert.equal(1, r.has_ims)
    assert.equal(NOV94, r.ims)
  end)

  it("ignores If-Modified-Since with If-None-Match, on POST, when invalid or repeated", function()
    assert.equal(0, request({ { "If-None-Match", '"a"' },
                              { "If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT" } }).has_ims)
    assert.equal(0, request({ { "If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT" } }, POST).has_ims)
    assert.equal(1, request({ { "If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT" } }, HEAD).has_ims)
    assert.equal(0, request({ { "If-Modified-Since", "yesterday" } }).has_ims)
    assert.equal(0, request({ { "If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT" },
                              { "If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT" } }).has_ims)
  end)

  it("reads Date, Expires, Age, Last-Modified, ETag, Set-Cookie and Vary: *", function()
    local r = response({ { "Date", DATE_NOW }, { "Expires", "Sun, 06 Nov 1994 08:49:37 GMT" },
                         { "Age", "12" }, { "Age", "30" }, { "Age", "x" },
                         { "Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT" },
                         { "ETag", 'W/"v1"' }, { "Set-Cookie", "a=b" }, { "Vary", "Accept, *" } })
    assert.equal(1, r.has_date)
    assert.equal(NOW, r.date)
    assert.equal(1, r.has_expires)
    assert.equal(NOV94, r.expires)
    assert.equal(1, r.has_age)
    assert.equal(30, r.age)
    assert.equal(1, r.has_last_modified)
    assert.equal(1, r.has_etag)
    assert.equal(1, r.set_cookie)
    assert.equal(1, r.vary_star)
    assert.equal(1, r.explicit_fresh)
  end)

  it("reads an invalid Expires, or two, as already expired", function()
    local r = response({ { "Expires", "0" } })
    assert.equal(1, r.has_expires)
    assert.equal(0, r.expires)
    r = response({ { "Expires", DATE_NOW }, { "Expires", DATE_NOW } })
    assert.equal(0, r.expires)
  end)

  it("drops an invalid Date, an invalid ETag, an invalid Age", function()
    local r = response({ { "Date", "today" }, { "ETag", "v1" }, { "Age", "-3" } })
    assert.equal(0, r.has_date)
    assert.equal(0, r.has_etag)
    assert.equal(0, r.has_age)
    assert.equal(0, r.explicit_fresh)
  end)
end)

describe("storing a response", function()
  local function verdict(resp_list, opts)
    local v = store(resp_list, opts)
    return tonumber(v)
  end
  local MAXAGE = { { "Cache-Control", "max-age=60" } }

  it("stores a GET 200 with max-age", function()
    local v, e = store(MAXAGE)
    assert.equal(STORE.store, v)
    assert.equal(60, e.lifetime)
    assert.equal(0, e.ttl_rule)
    assert.equal("store", ffi.string(core.cpol_store_name(v)))
  end)

  it("stores only GET responses (not HEAD, not POST)", function()
    assert.equal(STORE.method, verdict(MAXAGE, { method = HEAD }))
    assert.equal(STORE.method, verdict(MAXAGE, { method = POST }))
    assert.equal("method", ffi.string(core.cpol_store_name(STORE.method)))
  end)

  it("never stores 206, 304, 1xx, or an unknown class", function()
    for _, s in ipairs({ 206, 304, 100, 101, 600, 99 }) do
      assert.equal(STORE.status, verdict(MAXAGE, { status = s }), s)
    end
  end)

  it("stores other statuses only with explicit freshness (or public)", function()
    assert.equal(STORE.status, verdict({ { "ETag", '"a"' } }, { status = 302 }))
    assert.equal(STORE.store, verdict(MAXAGE, { status = 302 }))
    assert.equal(STORE.store, verdict(MAXAGE, { status = 503 }))
    assert.equal(STORE.store, verdict({ { "Cache-Control", "public" }, { "ETag", '"a"' } }, { status = 302 }))
    assert.equal(STORE.store, verdict({ { "Expires", "Thu, 03 Dec 2026 00:00:00 GMT" } }, { status = 201 }))
  end)

  it("knows the statuses cacheable by default", function()
    for _, s in ipairs({ 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501 }) do
      assert.equal(1, core.cpol_status_heuristic(s), s)
    end
    for _, s in ipairs({ 201, 302, 303, 307, 400, 403, 500, 502, 503, 504 }) do
      assert.equal(0, core.cpol_status_heuristic(s), s)
    end
  end)

  it("refuses no-store on either side", function()
    assert.equal(STORE.no_store, verdict({ { "Cache-Control", "max-age=60, no-store" } }))
    assert.equal(STORE.no_store, verdict(MAXAGE, { req = { { "Cache-Control", "no-store" } } }))
  end)

  it("refuses private, also with a field list", function()
    assert.equal(STORE.private, verdict({ { "Cache-Control", "max-age=60, private" } }))
    assert.equal(STORE.private, verdict({ { "Cache-Control", 'max-age=60, private="x"' } }))
  end)

  it("stores answers to Authorization only with public, s-maxage or must-revalidate", function()
    local auth = { { "Authorization", "Bearer t" } }
    assert.equal(STORE.auth, verdict(MAXAGE, { req = auth }))
    assert.equal(STORE.store, verdict({ { "Cache-Control", "public, max-age=60" } }, { req = auth }))
    assert.equal(STORE.store, verdict({ { "Cache-Control", "s-maxage=60" } }, { req = auth }))
    assert.equal(STORE.store, verdict({ { "Cache-Control", "max-age=60, must-revalidate" } }, { req = auth }))
  end)

  it("stores Set-Cookie responses only with public or s-maxage", function()
    local sc = { { "Set-Cookie", "s=1" }, { "Cache-Control", "max-age=60" } }
    assert.equal(STORE.cookie, verdict(sc))
    assert.equal(STORE.store, verdict({ { "Set-Cookie", "s=1" }, { "Cache-Control", "public, max-age=60" } }))
    assert.equal(STORE.store, verdict({ { "Set-Cookie", "s=1" }, { "Cache-Control", "s-maxage=60" } }))
  end)

  it("never stores Vary: *, nor a Vary list it cannot key on", function()
    assert.equal(STORE.vary, verdict({ { "Cache-Control", "max-age=60" }, { "Vary", "*" } }))
    assert.equal(STORE.vary, verdict({ { "Cache-Control", "max-age=60" }, { "Vary", "Accept" },
                                       { "Vary", "*" } }))
    local names = {}
    for i = 1, 17 do names[i] = "X-H" .. i end
    assert.equal(STORE.vary, verdict({ { "Cache-Control", "max-age=60" },
                                       { "Vary", table.concat(names, ",") } }))
    assert.equal(STORE.store, verdict({ { "Cache-Control", "max-age=60" }, { "Vary", "Accept-Encoding" } }))
  end)

  it("gives the configured ttl to a 200 without explicit freshness only", function()
    local v, e = store({}, { ttl = 300 })
    assert.equal(STORE.store, v)
    assert.equal(300, e.lifetime)
    assert.equal(1, e.ttl_rule)
    -- Not to a 404, not when there is explicit freshness.
    v, e = store({}, { ttl = 300, status = 404 })
    assert.equal(STORE.freshness, v)
    assert.equal(0, e.lifetime)
    e = select(2, store({ { "Cache-Control", "max-age=5" } }, { ttl = 300 }))
    assert.equal(5, e.lifetime)
    assert.equal(0, e.ttl_rule)
    e = select(2, store({ { "Expires", "0" } }, { ttl = 300 }))
    assert.equal(0, e.lifetime)
  end)

  it("gives no ttl to Authorization or Set-Cookie answers unless public / s-maxage", function()
    local v, e = store({ { "Cache-Control", "must-revalidate" }, { "ETag", '"a"' } },
      { ttl = 300, req = { { "Authorization", "x" } } })
    assert.equal(STORE.store, v)
    assert.equal(0, e.lifetime)
    v, e = store({ { "Cache-Control", "public" } }, { ttl = 300, req = { { "Authorization", "x" } } })
    assert.equal(STORE.store, v)
    assert.equal(300, e.lifetime)
    v, e = store({ { "Cache-Control", "public" }, { "Set-Cookie", "a=b" } }, { ttl = 300 })
    assert.equal(STORE.store, v)
    assert.equal(300, e.lifetime)
  end)

  it("stores a response with no freshness only when it has a validator", function()
    assert.equal(STORE.freshness, verdict({}))
    assert.equal(STORE.freshness, verdict({ { "Cache-Control", "max-age=0" } }))
    assert.equal(STORE.freshness, verdict({ { "Cache-Control", "no-cache, max-age=60" } }))
    assert.equal(STORE.store, verdict({ { "ETag", '"a"' } }))
    assert.equal(STORE.store, verdict({ { "Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT" } }))
    assert.equal(STORE.store, verdict({ { "Cache-Control", "no-cache" }, { "ETag", '"a"' } }))
    -- ... or may be served stale on error.
    assert.equal(STORE.store, verdict({ { "Cache-Control", "max-age=0, stale-if-error=60" } }))
    assert.equal(STORE.freshness,
      verdict({ { "Cache-Control", "max-age=0, must-revalidate, stale-if-error=60" } }))
  end)
end)

describe("freshness lifetime", function()
  local function lifetime(list, t1)
    local _, e = store(list, { t1 = t1 })
    return tonumber(e.lifetime)
  end

  it("prefers s-maxage, then max-age, then Expires - Date", function()
    local exp = { "Expires", "Wed, 02 Dec 2026 01:00:00 GMT" }
    assert.equal(10, lifetime({ { "Cache-Control", "max-age=20, s-maxage=10" }, exp }))
    assert.equal(20, lifetime({ { "Cache-Control", "max-age=20" }, exp }))
    assert.equal(3600, lifetime({ { "Date", DATE_NOW }, exp }))
    -- Expires against Date, not against the time it arrived.
    assert.equal(3600, lifetime({ { "Date", DATE_NOW }, exp }, NOW + 50))
    -- Without Date: against the response time.
    assert.equal(3550, lifetime({ exp }, NOW + 50))
  end)

  it("reads an Expires in the past, or invalid, as 0, and max-age overrides it", function()
    assert.equal(0, lifetime({ { "Date", DATE_NOW }, { "Expires", "Sun, 06 Nov 1994 08:49:37 GMT" } }))
    assert.equal(0, lifetime({ { "Expires", "-1" } }))
    assert.equal(30, lifetime({ { "Expires", "-1" }, { "Cache-Control", "max-age=30" } }))
  end)

  it("s-maxage makes the entry must-revalidate", function()
    local _, e = store({ { "Cache-Control", "s-maxage=10" } })
    assert.equal(1, e.must_revalidate)
    _, e = store({ { "Cache-Control", "proxy-revalidate, max-age=1" } })
    assert.equal(1, e.must_revalidate)
    _, e = store({ { "Cache-Control", "max-age=1" } })
    assert.equal(0, e.must_revalidate)
  end)
end)

describe("age (RFC 9111 4.2.3)", function()
  it("takes the larger of the apparent age and Age plus the response delay", function()
    -- Sent at NOW-2, arrived at NOW; Date 10 s before arrival, Age 5.
    local _, e = store({ { "Date", fmt(NOW - 10) }, { "Age", "5" }, { "Cache-Control", "max-age=60" } },
      { t0 = NOW - 2, t1 = NOW })
    assert.equal(10, e.corrected_initial_age)
    assert.equal(10, core.cpol_entry_age(e, NOW))
    assert.equal(110, core.cpol_entry_age(e, NOW + 100))
    assert.equal(-50, core.cpol_entry_ttl(e, NOW + 100))
    _, e = store({ { "Date", fmt(NOW - 10) }, { "Age", "30" } }, { t0 = NOW - 2, t1 = NOW })
    assert.equal(32, e.corrected_initial_age)
  end)

  it("counts no apparent age without Date or with a Date in the future", function()
    local _, e = store({ { "Cache-Control", "max-age=60" } }, { t0 = NOW - 1, t1 = NOW })
    assert.equal(1, e.corrected_initial_age)
    assert.equal(NOW, e.date)
    _, e = store({ { "Date", fmt(NOW + 3600) } }, { t0 = NOW, t1 = NOW })
    assert.equal(0, e.corrected_initial_age)
  end)

  it("sends Age in whole seconds, never negative, at most 2^31", function()
    local _, e = store({ { "Cache-Control", "max-age=60" } }, { t0 = NOW, t1 = NOW })
    assert.equal(0, tonumber(core.cpol_age_header(e, NOW - 100)))
    assert.equal(7, tonumber(core.cpol_age_header(e, NOW + 7.9)))
    _, e = store({ { "Age", "99999999999999" } }, { t0 = NOW, t1 = NOW })
    assert.equal(DELTA_MAX, tonumber(core.cpol_age_header(e, NOW + 1e9)))
  end)
end)

describe("serving a stored entry", function()
  local function entry(cc, extra)
    local list = { { "Cache-Control", cc } }
    for _, f in ipairs(extra or {}) do list[#list + 1] = f end
    local v, e = store(list, { t0 = NOW, t1 = NOW })
    return e, v
  end

  it("serves a fresh entry and revalidates a stale one", function()
    local e = entry("max-age=60")
    assert.equal(SERVE.fresh, serve(e, {}, NOW + 59))
    assert.equal(SERVE.revalidate, serve(e, {}, NOW + 60))
    assert.equal("fresh", ffi.string(core.cpol_serve_name(SERVE.fresh)))
    assert.equal("revalidate", ffi.string(core.cpol_serve_name(SERVE.revalidate)))
  end)

  it("always revalidates a no-cache response, and for a no-cache request", function()
    local e = entry("max-age=60, no-cache", { { "ETag", '"a"' } })
    assert.equal(SERVE.revalidate, serve(e, {}, NOW + 1))
    e = entry("max-age=60")
    assert.equal(SERVE.revalidate, serve(e, { { "Cache-Control", "no-cache" } }, NOW + 1))
    assert.equal(SERVE.revalidate, serve(e, { { "Pragma", "no-cache" } }, NOW + 1))
  end)

  it("honours the request's max-age and min-fresh", function()
    local e = entry("max-age=60")
    assert.equal(SERVE.revalidate, serve(e, { { "Cache-Control", "max-age=0" } }, NOW + 1))
    assert.equal(SERVE.fresh, serve(e, { { "Cache-Control", "max-age=10" } }, NOW + 10))
    assert.equal(SERVE.revalidate, serve(e, { { "Cache-Control", "max-age=10" } }, NOW + 11))
    assert.equal(SERVE.fresh, serve(e, { { "Cache-Control", "min-fresh=20" } }, NOW + 40))
    assert.equal(SERVE.revalidate, serve(e, { { "Cache-Control", "min-fresh=20" } }, NOW + 41))
  end)

  it("serves stale within the request's max-stale, not past it", function()
    local e = entry("max-age=60")
    assert.equal(SERVE.stale, serve(e, { { "Cache-Control", "max-stale=30" } }, NOW + 90))
    assert.equal(SERVE.revalidate, serve(e, { { "Cache-Control", "max-stale=30" } }, NOW + 91))
    assert.equal(SERVE.stale, serve(e, { { "Cache-Control", "max-stale" } }, NOW + 1e6))
    -- max-age still bounds the age.
    assert.equal(SERVE.revalidate, serve(e, { { "Cache-Control", "max-stale, max-age=70" } }, NOW + 71))
  end)

  it("serves stale within stale-while-revalidate and revalidates behind it", function()
    local e = entry("max-age=60, stale-while-revalidate=30")
    assert.equal(SERVE.fresh, serve(e, {}, NOW + 30))
    assert.equal(SERVE.stale_bg, serve(e, {}, NOW + 75))
    assert.equal(SERVE.stale_bg, serve(e, {}, NOW + 90))
    assert.equal(SERVE.revalidate, serve(e, {}, NOW + 91))
    assert.equal(SERVE.revalidate, serve(e, { { "Cache-Control", "min-fresh=1" } }, NOW + 75))
    assert.equal("stale-revalidate", ffi.string(core.cpol_serve_name(SERVE.stale_bg)))
  end)

  it("never serves stale when must-revalidate, proxy-revalidate or s-maxage forbid it", function()
    for _, cc in ipairs({ "max-age=60, must-revalidate, stale-while-revalidate=30",
                          "max-age=60, proxy-revalidate, stale-while-revalidate=30",
                          "s-maxage=60, stale-while-revalidate=30" }) do
      local e = entry(cc)
      assert.equal(SERVE.fresh, serve(e, {}, NOW + 10), cc)
      assert.equal(SERVE.revalidate, serve(e, {}, NOW + 70), cc)
      assert.equal(SERVE.revalidate, serve(e, { { "Cache-Control", "max-stale" } }, NOW + 70), cc)
    end
  end)

  it("answers only-if-cached with the entry or a failure, never a revalidation", function()
    local e = entry("max-age=60")
    assert.equal(SERVE.fresh, serve(e, { { "Cache-Control", "only-if-cached" } }, NOW + 1))
    assert.equal(SERVE.oic_fail, serve(e, { { "Cache-Control", "only-if-cached" } }, NOW + 61))
    assert.equal(SERVE.stale, serve(e, { { "Cache-Control", "only-if-cached, max-stale" } }, NOW + 61))
  end)

  it("serves stale on a backend failure within stale-if-error or max-stale", function()
    local rq = request({})
    local e = entry("max-age=60, stale-if-error=100")
    assert.equal(1, core.cpol_stale_on_error(e, rq, NOW + 160))
    assert.equal(0, core.cpol_stale_on_error(e, rq, NOW + 161))
    e = entry("max-age=60")
    assert.equal(0, core.cpol_stale_on_error(e, rq, NOW + 61))
    assert.equal(1, core.cpol_stale_on_error(e, request({ { "Cache-Control", "max-stale=10" } }), NOW + 70))
    local sie = request({ { "Cache-Control", "stale-if-error=10" } })
    assert.equal(1, core.cpol_stale_on_error(e, sie, NOW + 70))
    assert.equal(0, core.cpol_stale_on_error(e, sie, NOW + 71))
  end)

  it("does not serve stale on failure when must-revalidate or no-cache forbid it", function()
    local rq = request({})
    local mr = entry("max-age=60, stale-if-error=100, must-revalidate")
    assert.equal(0, core.cpol_stale_on_error(mr, rq, NOW + 61))
    assert.equal(0, core.cpol_stale_on_error(entry("s-maxage=60, stale-if-error=100"), rq, NOW + 61))
    assert.equal(0, core.cpol_stale_on_error(entry("max-age=60, stale-if-error=100"),
      request({ { "Cache-Control", "no-cache" } }), NOW + 61))
  end)

  it("counts 500, 502, 503, 504 as backend failures", function()
    for s, want in pairs({ [500] = 1, [502] = 1, [503] = 1, [504] = 1, [501] = 0, [404] = 0, [200] = 0 }) do
      assert.equal(want, core.cpol_status_is_failure(s), s)
    end
  end)
end)

describe("Vary", function()
  local function vary(list)
    local v = ffi.new("struct cpol_vary")
    local hd = head(list)
    local r = core.cpol_vary_parse(hd.h, v)
    local names = {}
    for i = 0, v.n - 1 do names[#names + 1] = ffi.string(v.names[i]) end
    return r, names, v
  end

  local function key(v, list, cap)
    local out = ffi.new("char[?]", cap or 512)
    local hd = head(list)
    local n = tonumber(core.cpol_vary_key(v, hd.h, out, cap or 512))
    if n < 0 then return nil end
    assert.equal(n, #ffi.string(out))
    return ffi.string(out, n)
  end

  it("lists the names lowercase, deduplicated, over several lines", function()
    local r, names = vary({ { "Vary", "Accept-Encoding, User-Agent" }, { "vary", "accept-encoding,Accept" } })
    assert.equal(0, r)
    assert.same({ "accept-encoding", "user-agent", "accept" }, names)
  end)

  it("detects * and names it cannot key on", function()
    local r, _, v = vary({ { "Vary", "Accept, *" } })
    assert.equal(-1, r)
    assert.equal(1, v.star)
    r, _, v = vary({ { "Vary", string.rep("a", 64) } })
    assert.equal(-1, r)
    assert.equal(1, v.overflow)
    r = vary({ { "Vary", "a=b" } })
    assert.equal(-1, r)
    r = vary({ { "Vary", string.rep("a", 63) } })
    assert.equal(0, r)
    r = vary({})
    assert.equal(0, r)
  end)

  it("keys a request on the normalized values, absent differing from empty", function()
    local _, _, v = vary({ { "Vary", "Accept-Encoding, X-Absent, X-Empty" } })
    assert.equal("accept-encoding:gzip,br\nx-absent!\nx-empty:\n",
      key(v, { { "Accept-Encoding", "gzip ,  br" }, { "X-Empty", "" } }))
    -- Several lines are joined by commas; runs of spaces become one.
    assert.equal("accept-encoding:gzip,br\nx-absent!\nx-empty:a b\n",
      key(v, { { "accept-encoding", "gzip" }, { "ACCEPT-ENCODING", " br " }, { "X-Empty", "a  \t b" } }))
    assert.is_nil(key(v, { { "Accept-Encoding", string.rep("x", 600) } }))
    assert.is_nil(key(v, {}, 10))
  end)

  it("matches requests that agree on every varied field", function()
    local _, _, v = vary({ { "Vary", "Accept-Encoding, Accept-Language" } })
    local a = head({ { "Accept-Encoding", "gzip, br" }, { "Accept-Language", "en" } })
    local b = head({ { "accept-encoding", "gzip" }, { "accept-encoding", "br" }, { "Accept-Language", "en" },
                     { "User-Agent", "other" } })
    local c = head({ { "Accept-Encoding", "gzip" }, { "Accept-Language", "en" } })
    local d = head({ { "Accept-Encoding", "gzip, br" } })
    local e = head({ { "Accept-Encoding", "gzip, br" }, { "Accept-Language", "" } })
    assert.equal(1, core.cpol_vary_match(v, a.h, b.h))
    assert.equal(0, core.cpol_vary_match(v, a.h, c.h))
    assert.equal(0, core.cpol_vary_match(v, a.h, d.h))
    assert.equal(0, core.cpol_vary_match(v, d.h, e.h))
    assert.equal(1, core.cpol_vary_match(v, d.h, d.h))
    -- The same verdicts as comparing keys.
    assert.equal(key(v, { { "Accept-Encoding", "gzip, br" }, { "Accept-Language", "en" } }),
      key(v, { { "accept-encoding", "gzip" }, { "accept-encoding", "br" }, { "Accept-Language", "en" } }))
  end)

  it("lets every request match a response without Vary", function()
    local _, _, v = vary({})
    assert.equal(1, core.cpol_vary_match(v, head({ { "A", "1" } }).h, head({}).h))
    assert.equal("", key(v, { { "A", "1" } }))
  end)
end)

describe("entity-tags and conditional requests", function()
  local function weak(a, b) return core.cpol_etag_weak_eq(a, #a, b, #b) end
  local function strong(a, b) return core.cpol_etag_strong_eq(a, #a, b, #b) end

  it("compares like RFC 9110 8.8.3.2's table", function()
    -- W/"1" W/"1": weak yes, strong no; W/"1" W/"2": no; W/"1" "1": weak yes; "1" "1": both.
    assert.equal(1, weak('W/"1"', 'W/"1"'))
    assert.equal(0, strong('W/"1"', 'W/"1"'))
    assert.equal(0, weak('W/"1"', 'W/"2"'))
    assert.equal(1, weak('W/"1"', '"1"'))
    assert.equal(0, strong('W/"1"', '"1"'))
    assert.equal(1, weak('"1"', '"1"'))
    assert.equal(1, strong('"1"', '"1"'))
    assert.equal(1, strong('""', '""'))
  end)

  it("refuses what is not an entity-tag", function()
    assert.equal(0, weak("1", "1"))
    assert.equal(0, weak('"1', '"1'))
    assert.equal(0, weak('"1"x', '"1"x'))
    assert.equal(0, weak('w/"1"', 'w/"1"'))
    assert.equal(0, weak('"a b"', '"a b"'))
    assert.equal(0, weak("", ""))
  end)

  local function inm(value, etag)
    local hd = head(type(value) == "table" and value or { { "If-None-Match", value } })
    return core.cpol_inm_matches(hd.h, etag, etag and #etag or 0)
  end

  it("matches If-None-Match lists weakly, * against anything", function()
    assert.equal(1, inm('"x", "y"', '"y"'))
    assert.equal(1, inm('W/"y"', '"y"'))
    assert.equal(1, inm('"y"', 'W/"y"'))
    assert.equal(0, inm('"x", "z"', '"y"'))
    assert.equal(1, inm("*", '"y"'))
    assert.equal(1, inm("*", nil))
    assert.equal(0, inm('"y"', nil))
    assert.equal(1, inm({ { "If-None-Match", '"a"' }, { "if-none-match", '"y"' } }, '"y"'))
    assert.equal(0, inm('y', '"y"'))
    assert.equal(0, inm('"y" "z"', '"y"'))
    assert.equal(0, inm({ { "If-None-Match", '"y"' }, { "If-None-Match", 'bad' } }, '"y"'))
  end)

  local STORED = { { "ETag", '"v1"' }, { "Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT" },
                   { "Date", DATE_NOW } }
  local function cond(req_list, method, stored)
    local rq, hd = request(req_list, method)
    local sh = head(stored or STORED)
    return core.cpol_conditional(rq, hd.h, sh.h, NOW)
  end

  it("answers If-None-Match from the stored ETag", function()
    assert.equal(NOT_MODIFIED, cond({ { "If-None-Match", '"v0", W/"v1"' } }))
    assert.equal(FULL, cond({ { "If-None-Match", '"v2"' } }))
    assert.equal(NOT_MODIFIED, cond({ { "If-None-Match", '"v1"' } }, HEAD))
    assert.equal(FULL, cond({ { "If-None-Match", '"v1"' } }, POST))
  end)

  it("answers If-Modified-Since from Last-Modified, only without If-None-Match", function()
    assert.equal(NOT_MODIFIED, cond({ { "If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT" } }))
    assert.equal(NOT_MODIFIED, cond({ { "If-Modified-Since", "Mon, 07 Nov 1994 08:49:37 GMT" } }))
    assert.equal(FULL, cond({ { "If-Modified-Since", "Sun, 06 Nov 1994 08:49:36 GMT" } }))
    assert.equal(FULL, cond({ { "If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT" },
                              { "If-None-Match", '"v2"' } }))
    assert.equal(FULL, cond({ { "If-Modified-Since", "garbage" } }))
    assert.equal(FULL, cond({}))
  end)

  it("uses the stored Date when there is no Last-Modified", function()
    local stored = { { "Date", DATE_NOW } }
    assert.equal(NOT_MODIFIED, cond({ { "If-Modified-Since", DATE_NOW } }, GET, stored))
    assert.equal(FULL, cond({ { "If-Modified-Since", fmt(NOW - 1) } }, GET, stored))
    assert.equal(FULL, cond({ { "If-Modified-Since", DATE_NOW } }, GET, {}))
  end)

  it("names the fields a 304 carries and the conditionals a revalidation drops", function()
    for _, f in ipairs({ "Cache-Control", "Content-Location", "Date", "ETag", "Expires", "Vary",
                         "Last-Modified" }) do
      assert.equal(1, core.cpol_field_in_304(f, #f), f)
    end
    for _, f in ipairs({ "Content-Length", "Content-Type", "Set-Cookie", "Age" }) do
      assert.equal(0, core.cpol_field_in_304(f, #f), f)
    end
    for _, f in ipairs({ "If-None-Match", "if-modified-since", "If-Match", "If-Unmodified-Since",
                         "If-Range" }) do
      assert.equal(1, core.cpol_field_conditional(f, #f), f)
    end
    assert.equal(0, core.cpol_field_conditional("If", 2))
  end)
end)

describe("revalidation", function()
  local function validators(list, cap)
    local out = ffi.new("char[?]", cap or 256)
    local n = tonumber(core.cpol_validators(head(list).h, out, cap or 256))
    if n < 0 then return nil end
    return ffi.string(out, n)
  end

  it("sends If-None-Match from the ETag and If-Modified-Since from Last-Modified", function()
    assert.equal('If-None-Match: W/"v1"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n',
      validators({ { "ETag", 'W/"v1"' }, { "Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT" } }))
    assert.equal('If-None-Match: "a"\r\n', validators({ { "etag", '"a"' } }))
    assert.equal("", validators({ { "ETag", "bad" }, { "Last-Modified", "bad" } }))
    assert.is_nil(validators({ { "ETag", '"a"' } }, 10))
  end)

  local function selects(stored, r304)
    return core.cpol_304_selects(head(stored).h, head(r304).h)
  end

  it("lets a 304 update only the representation it names", function()
    assert.equal(1, selects({ { "ETag", '"a"' } }, { { "ETag", '"a"' } }))
    assert.equal(0, selects({ { "ETag", '"a"' } }, { { "ETag", '"b"' } }))
    assert.equal(0, selects({ { "ETag", 'W/"a"' } }, { { "ETag", '"a"' } }))
    assert.equal(1, selects({ { "ETag", '"a"' } }, { { "ETag", 'W/"a"' } }))
    assert.equal(0, selects({}, { { "ETag", '"a"' } }))
    assert.equal(1, selects({ { "ETag", '"a"' } }, {}))
    local lm = { "Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT" }
    assert.equal(1, selects({ lm }, { lm }))
    assert.equal(0, selects({ lm }, { { "Last-Modified", DATE_NOW } }))
  end)

  local function merge(stored, r304, cap)
    local out = ffi.new("char[?]", cap or 1024)
    local n = tonumber(core.cpol_merge_304(head(stored).h, head(r304).h, out, cap or 1024))
    if n < 0 then return nil end
    return ffi.string(out, n)
  end

  it("merges a 304: its fields replace the stored ones, except the body's framing", function()
    local stored = { { "Content-Type", "text/plain" }, { "Content-Length", "5" }, { "ETag", '"a"' },
                     { "Cache-Control", "max-age=10" }, { "Age", "5" }, { "X-Old", "1" },
                     { "Set-Cookie", "a=1" }, { "Set-Cookie", "b=2" }, { "Date", fmt(NOW - 100) } }
    local r304 = { { "ETag", '"a"' }, { "Cache-Control", "max-age=60" }, { "Content-Length", "0" },
                   { "Date", DATE_NOW }, { "Connection", "close" }, { "X-Hop", "1", hop = true },
                   { "set-cookie", "c=3" }, { "Content-Encoding", "gzip" } }
    assert.equal("Content-Type: text/plain\r\nContent-Length: 5\r\nX-Old: 1\r\n" ..
                 'ETag: "a"\r\nCache-Control: max-age=60\r\nDate: ' .. DATE_NOW .. "\r\n" ..
                 "set-cookie: c=3\r\n", merge(stored, r304))
    assert.is_nil(merge(stored, r304, 40))
  end)

  it("keeps the stored fields a 304 does not carry, and drops the old Age", function()
    assert.equal("A: 1\r\nB: 2\r\nAge: 3\r\n",
      merge({ { "A", "1" }, { "Age", "50" }, { "B", "2" } }, { { "Age", "3" } }))
    assert.equal("", merge({}, {}))
  end)

  it("names the fields that are stored and those a 304 may update", function()
    for _, f in ipairs({ "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Transfer-Encoding",
                         "Upgrade", "Trailer", "Proxy-Authenticate", "Proxy-Authentication-Info" }) do
      assert.equal(0, core.cpol_field_storable(f, #f), f)
    end
    for _, f in ipairs({ "Content-Type", "Set-Cookie", "ETag", "Age", "Content-Length" }) do
      assert.equal(1, core.cpol_field_storable(f, #f), f)
    end
    for _, f in ipairs({ "Content-Length", "Content-Encoding", "Content-Range", "Connection" }) do
      assert.equal(0, core.cpol_field_updatable(f, #f), f)
    end
    assert.equal(1, core.cpol_field_updatable("Cache-Control", 13))
  end)
end)

describe("invalidation", function()
  it("is caused by a non-error answer to an unsafe method", function()
    assert.equal(1, core.cpol_invalidates(POST, 200))
    assert.equal(1, core.cpol_invalidates(PUT, 201))
    assert.equal(1, core.cpol_invalidates(DELETE, 204))
    assert.equal(1, core.cpol_invalidates(POST, 303))
    assert.equal(0, core.cpol_invalidates(POST, 404))
    assert.equal(0, core.cpol_invalidates(PUT, 500))
    assert.equal(0, core.cpol_invalidates(POST, 100))
    for _, m in ipairs({ GET, HEAD, OPTIONS, TRACE }) do
      assert.equal(0, core.cpol_invalidates(m, 200), m)
    end
  end)

  local function same(value, host)
    local off, len = ffi.new("size_t[1]"), ffi.new("size_t[1]")
    if core.cpol_same_host_uri(value, #value, host, #host, off, len) ~= 1 then return nil end
    return value:sub(tonumber(off[0]) + 1, tonumber(off[0] + len[0]))
  end

  it("follows Location and Content-Location on the same host only", function()
    assert.equal("/a/b?c", same("/a/b?c", "example.com"))
    assert.equal("/x", same("http://Example.COM/x", "example.com:8080"))
    assert.equal("/x?q", same("https://example.com:443/x?q#frag", "example.com"))
    assert.equal("/y", same("//example.com/y#f", "example.com"))
    assert.equal("", same("http://example.com", "example.com"))
    assert.equal("/v6", same("http://[::1]:8080/v6", "[::1]"))
    assert.is_nil(same("http://other.com/x", "example.com"))
    assert.is_nil(same("http://example.com.evil/x", "example.com"))
    assert.is_nil(same("x/y", "example.com"))
    assert.is_nil(same("ftp://example.com/x", "example.com"))
    assert.is_nil(same("http://user@example.com/x", "example.com"))
    assert.is_nil(same("/a b", "example.com"))
    assert.is_nil(same("", "example.com"))
  end)
end)

describe("names", function()
  it("spells X-Cache values and store verdicts", function()
    assert.equal("MISS", ffi.string(core.cpol_xcache_name(0)))
    assert.equal("HIT", ffi.string(core.cpol_xcache_name(1)))
    assert.equal("STALE", ffi.string(core.cpol_xcache_name(2)))
    assert.equal("REVALIDATED", ffi.string(core.cpol_xcache_name(3)))
    local names = {}
    for i = 0, 8 do names[#names + 1] = ffi.string(core.cpol_store_name(i)) end
    assert.same({ "store", "method", "status", "no-store", "private", "authorization",
                  "set-cookie", "vary", "freshness" }, names)
  end)
end)

describe("header access and numbers", function()
  it("finds fields case-insensitively and counts lines", function()
    local hd = head({ { "A", "1" }, { "b", "2" }, { "a", "3" } })
    local n = ffi.new("size_t[1]")
    assert.equal("1", ffi.string(core.cpol_head_get(hd.h, "a", n), n[0]))
    assert.equal(2, core.cpol_head_count(hd.h, "A"))
    assert.is_true(core.cpol_head_get(hd.h, "c", n) == nil)
  end)

  it("takes an absent value (NULL, 0) as empty", function()
    local t = ffi.new("double[1]")
    assert.equal(-1, core.cpol_date_parse(nil, 0, NOW, t))
    local cc = ffi.new("struct cpol_resp_cc")
    core.cpol_resp_cc_init(cc)
    core.cpol_resp_cc_add(cc, nil, 0)
    assert.equal(1, cc.present)
    assert.equal(ABSENT, cc.max_age)
    assert.equal(0, core.cpol_etag_weak_eq(nil, 0, nil, 0))
  end)

  it("reads delta-seconds strictly", function()
    local d = ffi.new("double[1]")
    assert.equal(0, core.cpol_delta_parse("0", 1, d))
    assert.equal(0, d[0])
    assert.equal(0, core.cpol_delta_parse("0042", 4, d))
    assert.equal(42, d[0])
    assert.equal(-1, core.cpol_delta_parse("", 0, d))
    assert.equal(-1, core.cpol_delta_parse(" 1", 2, d))
    assert.equal(-1, core.cpol_delta_parse("+1", 2, d))
  end)
end)

describe("list elements", function()
  local function elems(v)
    local pos, e, out = ffi.new("size_t[1]"), ffi.new("struct cpol_elem"), {}
    while core.cpol_list_next(v, #v, pos, e) == 1 do
      out[#out + 1] = {
        name = ffi.string(e.name, e.name_len),
        arg = e.has_arg == 1 and ffi.string(e.arg, e.arg_len) or nil,
        quoted = e.quoted == 1, bad = e.bad == 1,
      }
    end
    assert.equal(#v, tonumber(pos[0]))
    return out
  end

  it("splits at commas outside quoted strings", function()
    assert.same({
      { name = "a", quoted = false, bad = false },
      { name = "b", arg = "1", quoted = false, bad = false },
      { name = "c", arg = 'x, \\"y', quoted = true, bad = false },
      { name = "d", quoted = false, bad = false },
    }, elems(' a ,, b=1 ,c="x, \\"y",d,'))
  end)

  it("marks malformed elements and still finds the next one", function()
    assert.same({
      { name = "a", arg = "1", quoted = false, bad = true },
      { name = "", quoted = false, bad = true },
      { name = "b", arg = "x", quoted = true, bad = true },
      { name = "c", quoted = false, bad = false },
    }, elems('a=1 2, =x, b="x" "y,z", c'))
    assert.same({ { name = "a", arg = "open, b", quoted = true, bad = true } }, elems('a="open, b'))
    assert.same({}, elems(" , ,\t"))
  end)

  it("gives the same directives for a value whole and split into lines at its commas", function()
    for _, v in ipairs({ 'max-age=60, no-cache="a,b", s-maxage=5',
                         'stale-if-error=5, x="q,\\",max-age=1", stale-if-error=9, public' }) do
      local whole = resp_cc(v)
      local parts, start, inq, i = {}, 1, false, 1
      while i <= #v do
        local ch = v:sub(i, i)
        if inq and ch == "\\" then i = i + 1
        elseif ch == '"' then inq = not inq
        elseif ch == "," and not inq then parts[#parts + 1] = v:sub(start, i - 1); start = i + 1 end
        i = i + 1
      end
      parts[#parts + 1] = v:sub(start)
      assert.is_true(#parts >= 3)
      local split = resp_cc(unpack(parts))
      for _, k in ipairs({ "max_age", "s_maxage", "sie", "no_cache", "public_" }) do
        assert.equal(whole[k], split[k], k)
      end
    end
  end)
end)
