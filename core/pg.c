/* pg.c - the asynchronous PostgreSQL connection of a fleet node.
 *
 * One connection, owned here so it outlives reloads, driven only by
 * libpq's non-blocking calls under the loop: PQconnectStart and
 * PQconnectPoll under an ev_io (read or write, as asked), then
 * PQsendQueryParams, PQflush until it answers 0 (write interest while it
 * answers 1), PQconsumeInput on read and PQgetResult while !PQisBusy,
 * PQnotifies after each read.  One query is in flight at a time; the
 * queue, its bound and coalescing live in lua/ferry/pg.lua, which hears
 * of everything through runtime.pg_event (bridge_pg): UP once the session
 * is set up, DOWN when it is lost or a connect failed, RESULT when the
 * query in flight ended, NOTIFY for each notification.  During an event
 * Lua reads the details through the ferry_pg_* getters.
 *
 * A lost connection is retried with exponential back-off and jitter
 * (0.1 s doubling to 30 s); each change is logged once, never one line
 * per attempt.  A statement_timeout is set at connect so a slow server
 * cannot hold the queue; a query still running past twice that (a
 * frozen server, a dead network) resets the connection.  The conninfo
 * holds a password: only host, port and dbname are ever shown, and any
 * message is scrubbed of the password before it leaves this file.
 *
 * libpq resolves a host name itself, blocking: a single host name is
 * resolved first with c-ares (resolve.c) and handed to libpq as hostaddr
 * (host stays, for TLS verification). */
#include "pg.h"
#include "bridge.h"
#include "ferry.h"
#include "log.h"
#include "loop.h"
#include "resolve.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG_BACKOFF_MIN 0.1
#define PG_BACKOFF_MAX 30.0
#define PG_CONNECT_TIMEOUT 10.0 /* a connect attempt (TCP, TLS, auth) at most */

/* Where the connection is. */
enum pg_cstate {
    PGC_OFF = 0,     /* not configured */
    PGC_CONNECTING,  /* PQconnectPoll under way */
    PGC_SETUP,       /* connected; the session's SETs in flight */
    PGC_UP,          /* ready for queries */
    PGC_WAIT         /* lost or failed: the back-off timer runs */
};

/* The connection, its watchers and what Lua may read during an event. */
struct pg {
    PGconn *conn;          /* private: NULL unless CONNECTING, SETUP or UP */
    char *conninfo;        /* private: as configured (holds the password) */
    char *password;        /* private: to scrub from messages, or NULL */
    char *host;            /* private: a host name to resolve first, or NULL */
    int port;              /* private: its port */
    struct resolve_req *lookup; /* private: the DNS lookup under way, or NULL */
    char target[256];      /* ro: host:port/dbname, for logs and stats */
    double timeout;        /* rw: statement_timeout, seconds */
    enum pg_cstate st;     /* ro */
    ev_io io;              /* private: the socket */
    int io_fd;             /* private: the fd io watches, -1 none */
    int io_events;         /* private: EV_READ | EV_WRITE it watches */
    ev_timer tmo;          /* private: connect deadline, stuck query, back-off */
    double backoff;        /* private: the next wait after a failure */
    unsigned inflight:1;   /* ro: a query of Lua's is in flight */
    unsigned logged_down:1;/* private: the outage is logged */
    unsigned logged_max:1; /* private: "retrying every 30 s" is logged */
    unsigned broken:1;     /* private: a send failed: lost on the timer's next turn */
    uint32_t gen;          /* private: bumped at every close (guards re-entry) */
    PGresult *res;         /* ro: the result being gathered or handed over */
    PGnotify *note;        /* ro: the notification being handed over */
    double sent_at;        /* private: when the query in flight went out */
    double down_since;     /* private: when the outage began */
    uint64_t attempts;     /* ro: failed attempts in this outage */
    char err[512];         /* ro: the last error, scrubbed */
    struct ferry_pg_stats stats;
};

static struct pg pg = { .io_fd = -1, .timeout = 5.0, .backoff = PG_BACKOFF_MIN };

/* Remove every occurrence of the password from s (in place). */
static void scrub(char *s)
{
    if (pg.password == NULL || pg.password[0] == '\0') {
        return;
    }
    size_t n = strlen(pg.password);
    char *p;
    while ((p = strstr(s, pg.password)) != NULL) {
        memmove(p + 3, p + n, strlen(p + n) + 1);
        memcpy(p, "***", 3);
    }
}

/* pg.err = msg (libpq's end in a newline), scrubbed. */
static void set_err(const char *msg)
{
    snprintf(pg.err, sizeof(pg.err), "%s", msg != NULL && msg[0] != '\0' ? msg : "unknown error");
    size_t n = strlen(pg.err);
    while (n > 0 && (pg.err[n - 1] == '\n' || pg.err[n - 1] == ' ')) {
        pg.err[--n] = '\0';
    }
    for (char *p = pg.err; *p != '\0'; p++) {
        if (*p == '\n' || *p == '\t') {
            *p = ' ';
        }
    }
    scrub(pg.err);
}

/* libpq's "invalid connection option \"x\"" or "invalid URI query parameter:
 * \"x\"": copy x into name when it looks like an option name (lower-case letters,
 * digits, '_'), so the check can say which option is wrong. Anything else may
 * hold a piece of the value (a password): not copied. */
static int pg_unknown_option(const char *perr, char *name, size_t nlen)
{
    static const char *const forms[] = {"invalid connection option \"",
                                        "invalid URI query parameter: \""};
    if (perr == NULL) {
        return 0;
    }
    for (size_t f = 0; f < sizeof(forms) / sizeof(forms[0]); f++) {
        const char *p = strstr(perr, forms[f]);
        if (p == NULL) {
            continue;
        }
        p += strlen(forms[f]);
        size_t n = 0;
        while (p[n] != '\0' && p[n] != '"' && n + 1 < nlen &&
               ((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= '0' && p[n] <= '9') || p[n] == '_')) {
            n++;
        }
        if (n == 0 || p[n] != '"') {
            return 0;
        }
        memcpy(name, p, n);
        name[n] = '\0';
        return 1;
    }
    return 0;
}

/* The safe parts of a conninfo (host, port, dbname) and its password. */
static int parse_conninfo(const char *conninfo, char *target, size_t tlen, char **password,
                          char **resolve_host, int *resolve_port, char *err, size_t errlen)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (opts == NULL) {
        /* libpq's message may quote the string: say only what is wrong, with
         * the option's name when libpq names an unknown one (a name, never a value). */
        char name[41];
        if (pg_unknown_option(perr, name, sizeof(name))) {
            snprintf(err, errlen, "not a valid connection string: unknown option \"%s\"", name);
        } else {
            snprintf(err, errlen, "not a valid connection string (key=value pairs or a "
                     "postgresql:// URI)");
        }
        PQfreemem(perr);
        return -1;
    }
    const char *host = NULL, *hostaddr = NULL, *port = NULL, *db = NULL, *user = NULL;
    const char *pw = NULL;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL) {
            continue;
        }
        if (strcmp(o->keyword, "host") == 0) {
            host = o->val;
        } else if (strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = o->val;
        } else if (strcmp(o->keyword, "port") == 0) {
            port = o->val;
        } else if (strcmp(o->keyword, "dbname") == 0) {
            db = o->val;
        } else if (strcmp(o->keyword, "user") == 0) {
            user = o->val;
        } else if (strcmp(o->keyword, "password") == 0) {
            pw = o->val;
        }
    }
    snprintf(target, tlen, "%s:%s/%s", host != NULL ? host : hostaddr != NULL ? hostaddr
             : "localhost", port != NULL ? port : "5432", db != NULL ? db : user != NULL
             ? user : "(default)");
    if (password != NULL) {
        *password = pw != NULL && pw[0] != '\0' ? strdup(pw) : NULL;
    }
    if (resolve_host != NULL) {
        /* One host name (not a list, not a socket directory, no hostaddr)
         * on one port: resolved before libpq sees it. */
        *resolve_host = NULL;
        struct sockaddr_storage ss;
        socklen_t sl;
        int pn = port != NULL ? atoi(port) : 5432;
        if (host != NULL && hostaddr == NULL && host[0] != '\0' && host[0] != '/' &&
            host[0] != '@' && strchr(host, ',') == NULL && pn > 0 && pn < 65536 &&
            (port == NULL || strchr(port, ',') == NULL) &&
            !resolve_literal(host, pn, &ss, &sl)) {
            *resolve_host = strdup(host);
            *resolve_port = pn;
        }
    }
    PQconninfoFree(opts);
    return 0;
}

/* Hand an event to the runtime; 0 when the connection is still the one
 * it was (the runtime may have closed or reconfigured it). */
static int emit(int ev)
{
    uint32_t gen = pg.gen;
    bridge_pg(ev);
    return pg.gen == gen ? 0 : -1;
}

static void watch(int events)
{
    int fd = pg.conn != NULL ? PQsocket(pg.conn) : -1;
    if (fd == pg.io_fd && events == pg.io_events && fd >= 0) {
        return;
    }
    ev_io_stop(loop, &pg.io);
    pg.io_fd = fd;
    pg.io_events = events;
    if (fd >= 0 && events != 0) {
        ev_io_set(&pg.io, fd, events);
        ev_io_start(loop, &pg.io);
    }
}

static void arm(double after)
{
    ev_timer_stop(loop, &pg.tmo);
    if (after >= 0) {
        ev_timer_set(&pg.tmo, after, 0.);
        ev_timer_start(loop, &pg.tmo);
    }
}

/* Drop the connection (its watchers first), nothing else. */
static void drop_conn(void)
{
    if (pg.lookup != NULL) {
        resolve_cancel(pg.lookup);
        pg.lookup = NULL;
    }
    watch(0);
    ev_timer_stop(loop, &pg.tmo);
    if (pg.conn != NULL) {
        PQfinish(pg.conn);
        pg.conn = NULL;
    }
    if (pg.res != NULL) {
        PQclear(pg.res);
        pg.res = NULL;
    }
    pg.inflight = 0;
    pg.broken = 0;
    pg.gen++;
}

static void start_connect(void);

/* The connection failed or was lost: wait, then try again.  Logged once
 * per outage, and once more when the back-off reaches its ceiling. */
static void lost(const char *why)
{
    enum pg_cstate was = pg.st;
    set_err(why);
    drop_conn();
    pg.st = PGC_WAIT;
    pg.attempts++;
    if (was == PGC_UP || was == PGC_SETUP) {
        pg.stats.errors++;
        pg.down_since = ev_now(loop);
        pg.backoff = PG_BACKOFF_MIN;
        pg.logged_max = 0;
        log_event(LOG_WARN, "FERRY-8004", NULL, "postgres %s: connection lost: %s; reconnecting "
                  "with back-off (%.1f s doubling to %.0f s)", pg.target, pg.err, PG_BACKOFF_MIN,
                  PG_BACKOFF_MAX);
        pg.logged_down = 1;
    } else if (!pg.logged_down) {
        log_event(LOG_WARN, "FERRY-8003", NULL, "postgres %s: cannot connect: %s; retrying with "
                  "back-off (%.1f s doubling to %.0f s)", pg.target, pg.err, PG_BACKOFF_MIN,
                  PG_BACKOFF_MAX);
        pg.logged_down = 1;
    } else if (pg.backoff >= PG_BACKOFF_MAX && !pg.logged_max) {
        log_event(LOG_WARN, "FERRY-8003", NULL, "postgres %s: still down after %llu attempts: "
                  "%s; retrying every %.0f s", pg.target, (unsigned long long)pg.attempts,
                  pg.err, PG_BACKOFF_MAX);
        pg.logged_max = 1;
    }
    /* Jitter: 80..120 % of the step, so nodes that lost the same server
     * do not all come back in the same instant. */
    double wait = pg.backoff * (0.8 + 0.4 * ((double)rand() / RAND_MAX));
    pg.backoff = pg.backoff * 2 > PG_BACKOFF_MAX ? PG_BACKOFF_MAX : pg.backoff * 2;
    arm(wait);
    if (was == PGC_UP || was == PGC_SETUP) {
        emit(FERRY_PG_EV_DOWN);
    }
}

/* The session is set up: from now on Lua's queries go. */
static void session_up(void)
{
    pg.st = PGC_UP;
    pg.backoff = PG_BACKOFF_MIN;
    if (pg.attempts > 0 && pg.down_since > 0) {
        log_event(LOG_INFO, "FERRY-8002", NULL, "postgres %s: connected again after %.1f s "
                  "(%llu failed attempt%s)", pg.target, ev_now(loop) - pg.down_since,
                  (unsigned long long)pg.attempts, pg.attempts == 1 ? "" : "s");
    } else {
        log_event(LOG_INFO, "FERRY-8002", NULL, "postgres %s: connected", pg.target);
    }
    if (pg.down_since > 0 || pg.attempts > 0) {
        pg.stats.reconnects++;
    }
    pg.stats.connects++;
    pg.attempts = 0;
    pg.down_since = 0;
    pg.logged_down = 0;
    pg.logged_max = 0;
    pg.stats.up_since = ev_now(loop);
    emit(FERRY_PG_EV_UP);
}

/* Send what libpq holds; write interest while it cannot. */
static int flush_out(void)
{
    int r = PQflush(pg.conn);
    if (r < 0) {
        lost(PQerrorMessage(pg.conn));
        return -1;
    }
    watch(r == 1 ? EV_READ | EV_WRITE : EV_READ);
    return 0;
}

static void connected(void)
{
    if (PQsetnonblocking(pg.conn, 1) != 0) {
        lost(PQerrorMessage(pg.conn));
        return;
    }
    /* A slow statement is cancelled by the server; an idle transaction
     * (a bug) cannot hold locks for long. */
    char sql[160];
    snprintf(sql, sizeof(sql), "SET statement_timeout = %d; SET "
             "idle_in_transaction_session_timeout = %d", (int)(pg.timeout * 1000),
             (int)(pg.timeout * 2000));
    if (!PQsendQuery(pg.conn, sql)) {
        lost(PQerrorMessage(pg.conn));
        return;
    }
    pg.st = PGC_SETUP;
    arm(PG_CONNECT_TIMEOUT);
    flush_out();
}

static void poll_connect(void)
{
    PostgresPollingStatusType r = PQconnectPoll(pg.conn);
    /* libpq may have closed the socket and opened another (the next
     * address, SSL refused): the watcher starts afresh on every step. */
    pg.io_fd = -1;
    switch (r) {
    case PGRES_POLLING_READING:
        watch(EV_READ);
        break;
    case PGRES_POLLING_WRITING:
        watch(EV_WRITE);
        break;
    case PGRES_POLLING_OK:
        connected();
        break;
    default:
        lost(PQerrorMessage(pg.conn));
        break;
    }
}

/* The server's notices ("relation ... already exists, skipping") would
 * go to stderr raw: they become debug lines. */
static void on_notice(void *arg, const PGresult *r)
{
    (void)arg;
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n') {
        msg[--n] = '\0';
    }
    scrub(msg);
    log_event(LOG_DEBUG, "FERRY-8015", NULL, "postgres %s: %s", pg.target, msg);
}

/* Start libpq's connect; hostaddr: the resolved address, or NULL. */
static void connect_to(const char *hostaddr)
{
    /* Defaults first, then the conninfo expanded over them (its own
     * values win), then the resolved address on top.  Keepalives find a
     * peer that vanished while the session was idle (about 25 s). */
    const char *const keys[] = { "application_name", "keepalives_idle", "keepalives_interval",
                                 "keepalives_count", "dbname", "hostaddr", NULL };
    const char *const vals[] = { "ferry", "10", "5", "3", pg.conninfo, hostaddr, NULL };
    pg.conn = PQconnectStartParams(keys, vals, 1);
    if (pg.conn == NULL) {
        lost("out of memory");
        return;
    }
    if (PQstatus(pg.conn) == CONNECTION_BAD) {
        lost(PQerrorMessage(pg.conn));
        return;
    }
    PQsetNoticeReceiver(pg.conn, on_notice, NULL);
    pg.st = PGC_CONNECTING;
    arm(PG_CONNECT_TIMEOUT);
    /* PQconnectStart's first state is "write": the TCP connect. */
    watch(EV_WRITE);
}

static void on_resolved(void *arg, int status, const struct sockaddr *sa, socklen_t len)
{
    (void)arg;
    (void)len;
    pg.lookup = NULL;
    char ip[INET6_ADDRSTRLEN] = "";
    const void *a = NULL;
    if (status == 0 && sa->sa_family == AF_INET) {
        a = &((const struct sockaddr_in *)sa)->sin_addr;
    } else if (status == 0 && sa->sa_family == AF_INET6) {
        a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    }
    if (a == NULL || inet_ntop(sa->sa_family, a, ip, sizeof(ip)) == NULL) {
        char why[300];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", pg.host,
                 status != 0 ? resolve_strerror(status) : "no address");
        lost(why);
        return;
    }
    ev_timer_stop(loop, &pg.tmo);
    connect_to(ip);
}

static void start_connect(void)
{
    if (pg.host == NULL) {
        connect_to(NULL);
        return;
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    if (resolve_cached(pg.host, pg.port, &ss, &sl)) {
        on_resolved(NULL, 0, (const struct sockaddr *)&ss, sl);
        return;
    }
    pg.st = PGC_CONNECTING;
    arm(PG_CONNECT_TIMEOUT);
    pg.lookup = resolve_start(pg.host, pg.port, on_resolved, NULL);
    if (pg.lookup == NULL) {
        lost("cannot start a DNS lookup");
    }
}

/* A result of the query in flight, or of the session setup. */
static void take_result(PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    int bad = s == PGRES_BAD_RESPONSE || s == PGRES_FATAL_ERROR || s == PGRES_NONFATAL_ERROR;
    /* Keep the first error (a later result cannot hide it), else the last. */
    int held_bad = pg.res != NULL && (PQresultStatus(pg.res) == PGRES_FATAL_ERROR ||
                                      PQresultStatus(pg.res) == PGRES_BAD_RESPONSE);
    if (held_bad && !bad) {
        PQclear(r);
        return;
    }
    if (pg.res != NULL) {
        PQclear(pg.res);
    }
    pg.res = r;
}

static int result_failed(void)
{
    if (pg.res == NULL) {
        return 0;
    }
    ExecStatusType s = PQresultStatus(pg.res);
    return s == PGRES_BAD_RESPONSE || s == PGRES_FATAL_ERROR;
}

/* Hand each pending notification to the runtime. */
static int drain_notifies(void)
{
    PGnotify *n;
    while (pg.conn != NULL && (n = PQnotifies(pg.conn)) != NULL) {
        pg.stats.notifies++;
        pg.note = n;
        int changed = emit(FERRY_PG_EV_NOTIFY);
        pg.note = NULL;
        PQfreemem(n);
        if (changed) {
            return -1;
        }
    }
    return 0;
}

/* Read what arrived: notifications, and results while libpq has whole ones. */
static void on_readable(void)
{
    if (!PQconsumeInput(pg.conn)) {
        lost(PQerrorMessage(pg.conn));
        return;
    }
    if (drain_notifies() != 0) {
        return;
    }
    while ((pg.inflight || pg.st == PGC_SETUP) && !PQisBusy(pg.conn)) {
        PGresult *r = PQgetResult(pg.conn);
        if (r != NULL) {
            take_result(r);
            continue;
        }
        /* The query ended. */
        ev_timer_stop(loop, &pg.tmo);
        if (pg.st == PGC_SETUP) {
            if (result_failed()) {
                lost(PQresultErrorMessage(pg.res));
                return;
            }
            PQclear(pg.res);
            pg.res = NULL;
            session_up();
            return;
        }
        pg.inflight = 0;
        if (result_failed()) {
            pg.stats.errors++;
        }
        if (emit(FERRY_PG_EV_RESULT) != 0) {
            return;
        }
        if (pg.res != NULL) {
            PQclear(pg.res);
            pg.res = NULL;
        }
        /* The runtime may have sent the next query from its callback. */
    }
    if (PQstatus(pg.conn) == CONNECTION_BAD) {
        lost(PQerrorMessage(pg.conn));
        return;
    }
    drain_notifies();
}

static void on_io(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l;
    (void)w;
    if (pg.conn == NULL) {
        return;
    }
    if (pg.st == PGC_CONNECTING) {
        poll_connect();
        return;
    }
    if ((revents & EV_WRITE) && flush_out() != 0) {
        return;
    }
    if (revents & EV_READ) {
        on_readable();
    }
}

static void on_timeout(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    switch (pg.st) {
    case PGC_WAIT:
        start_connect();
        break;
    case PGC_CONNECTING:
    case PGC_SETUP:
        lost("timeout while connecting");
        break;
    case PGC_UP:
        if (pg.broken) {
            lost(pg.err);
        } else if (pg.inflight) {
            char why[160];
            snprintf(why, sizeof(why), "a query ran %.1f s, past the bound of %.1f s (the server "
                     "does not answer)", ev_now(loop) - pg.sent_at, pg.timeout * 2 + 1);
            log_event(LOG_WARN, "FERRY-8007", NULL, "postgres %s: %s: resetting the connection",
                      pg.target, why);
            lost(why);
        } else if (pg.conn != NULL && PQstatus(pg.conn) == CONNECTION_BAD) {
            lost(PQerrorMessage(pg.conn));
        }
        break;
    default:
        break;
    }
}

static void pg_close(void)
{
    drop_conn();
    pg.st = PGC_OFF;
    free(pg.conninfo);
    pg.conninfo = NULL;
    free(pg.password);
    pg.password = NULL;
    free(pg.host);
    pg.host = NULL;
    pg.target[0] = '\0';
    pg.attempts = 0;
    pg.down_since = 0;
    pg.logged_down = 0;
    pg.backoff = PG_BACKOFF_MIN;
}

int ferry_pg_check(const char *conninfo, const char **err)
{
    static char msg[160];
    char target[256];
    if (parse_conninfo(conninfo, target, sizeof(target), NULL, NULL, NULL, msg,
                       sizeof(msg)) != 0) {
        *err = msg;
        return FERRY_ERROR;
    }
    return FERRY_OK;
}

int ferry_pg_configure(const char *conninfo, double timeout, const char **err)
{
    static char msg[160];
    static int inited;
    if (!inited) {
        ev_io_init(&pg.io, on_io, -1, 0);
        ev_timer_init(&pg.tmo, on_timeout, 0., 0.);
        inited = 1;
    }
    if (timeout > 0) {
        pg.timeout = timeout; /* from the next (re)connect */
    }
    if (conninfo == NULL || conninfo[0] == '\0') {
        if (pg.st != PGC_OFF) {
            log_event(LOG_INFO, "FERRY-8002", NULL, "postgres %s: closed (no store.postgres)",
                      pg.target);
        }
        pg_close();
        return FERRY_OK;
    }
    if (pg.conninfo != NULL && strcmp(pg.conninfo, conninfo) == 0) {
        return FERRY_OK;
    }
    char target[256];
    char *password = NULL, *host = NULL;
    int port = 0;
    if (parse_conninfo(conninfo, target, sizeof(target), &password, &host, &port, msg,
                       sizeof(msg)) != 0) {
        *err = msg;
        return FERRY_ERROR;
    }
    char *copy = strdup(conninfo);
    if (copy == NULL) {
        free(password);
        free(host);
        *err = "out of memory";
        return FERRY_ERROR;
    }
    /* The runtime hands the old session's query in flight back to its
     * queue itself: nothing is emitted inside its own call. */
    pg_close();
    pg.conninfo = copy;
    pg.password = password;
    pg.host = host;
    pg.port = port;
    snprintf(pg.target, sizeof(pg.target), "%s", target);
    start_connect();
    return FERRY_OK;
}

int ferry_pg_state(void)
{
    switch (pg.st) {
    case PGC_OFF:
        return FERRY_PG_OFF;
    case PGC_UP:
        return pg.broken ? FERRY_PG_DOWN : FERRY_PG_UP; /* broken: lost on the next turn */
    case PGC_WAIT:
        return FERRY_PG_DOWN;
    default:
        /* Attempts after a failure are still an outage. */
        return pg.attempts > 0 ? FERRY_PG_DOWN : FERRY_PG_CONNECTING;
    }
}

int ferry_pg_send(const char *sql, int nparams, const char *const *values, const char **err)
{
    if (pg.st != PGC_UP || pg.conn == NULL) {
        *err = "not connected";
        return FERRY_ERROR;
    }
    if (pg.inflight) {
        *err = "a query is in flight";
        return FERRY_ERROR;
    }
    if (!PQsendQueryParams(pg.conn, sql, nparams, NULL, values, NULL, NULL, 0)) {
        set_err(PQerrorMessage(pg.conn));
        *err = pg.err;
        /* A broken connection is handled on the next turn of the loop. */
        if (PQstatus(pg.conn) == CONNECTION_BAD) {
            pg.broken = 1;
            arm(0);
        }
        return FERRY_ERROR;
    }
    pg.inflight = 1;
    pg.sent_at = ev_now(loop);
    pg.stats.queries++;
    if (pg.res != NULL) {
        PQclear(pg.res);
        pg.res = NULL;
    }
    arm(pg.timeout * 2 + 1);
    int r = PQflush(pg.conn);
    if (r < 0) {
        set_err(PQerrorMessage(pg.conn));
        pg.broken = 1;
        arm(0); /* lost on the next turn: the runtime hears it as DOWN */
        return FERRY_OK;
    }
    watch(r == 1 ? EV_READ | EV_WRITE : EV_READ);
    return FERRY_OK;
}

int ferry_pg_busy(void)
{
    return pg.inflight;
}

const char *ferry_pg_target(void)
{
    return pg.target;
}

const char *ferry_pg_error(void)
{
    return pg.err;
}

int ferry_pg_result_status(void)
{
    if (pg.res == NULL) {
        return FERRY_PG_RES_NONE;
    }
    switch (PQresultStatus(pg.res)) {
    case PGRES_TUPLES_OK:
    case PGRES_SINGLE_TUPLE:
        return FERRY_PG_RES_ROWS;
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        return FERRY_PG_RES_OK;
    default:
        return FERRY_PG_RES_ERROR;
    }
}

const char *ferry_pg_result_error(void)
{
    if (pg.res == NULL) {
        return "no result";
    }
    static char msg[512];
    const char *m = PQresultErrorField(pg.res, PG_DIAG_MESSAGE_PRIMARY);
    snprintf(msg, sizeof(msg), "%s", m != NULL ? m : PQresultErrorMessage(pg.res));
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n') {
        msg[--n] = '\0';
    }
    scrub(msg);
    return msg;
}

const char *ferry_pg_result_sqlstate(void)
{
    const char *s = pg.res != NULL ? PQresultErrorField(pg.res, PG_DIAG_SQLSTATE) : NULL;
    return s != NULL ? s : "";
}

int ferry_pg_nrows(void)
{
    return pg.res != NULL ? PQntuples(pg.res) : 0;
}

int ferry_pg_nfields(void)
{
    return pg.res != NULL ? PQnfields(pg.res) : 0;
}

const char *ferry_pg_fname(int col)
{
    return pg.res != NULL ? PQfname(pg.res, col) : NULL;
}

const char *ferry_pg_value(int row, int col, int *len)
{
    if (pg.res == NULL || row < 0 || row >= PQntuples(pg.res) || col < 0 ||
        col >= PQnfields(pg.res) || PQgetisnull(pg.res, row, col)) {
        *len = 0;
        return NULL;
    }
    *len = PQgetlength(pg.res, row, col);
    return PQgetvalue(pg.res, row, col);
}

double ferry_pg_affected(void)
{
    const char *s = pg.res != NULL ? PQcmdTuples(pg.res) : "";
    return s[0] != '\0' ? strtod(s, NULL) : 0;
}

const char *ferry_pg_notify_channel(void)
{
    return pg.note != NULL ? pg.note->relname : NULL;
}

const char *ferry_pg_notify_payload(void)
{
    return pg.note != NULL ? pg.note->extra : NULL;
}

void ferry_pg_stats(struct ferry_pg_stats *out)
{
    *out = pg.stats;
    out->state = ferry_pg_state();
    out->inflight = pg.inflight;
    out->attempts = (double)pg.attempts;
    out->down_since = pg.down_since;
    out->timeout = pg.timeout;
}

void pg_stop_all(void)
{
    if (pg.st != PGC_OFF || pg.conninfo != NULL) {
        pg_close();
    }
}
