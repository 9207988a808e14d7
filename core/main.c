/* main.c - command line, signals, and the loop. */
#include "bridge.h"
#include "cache.h"
#include "ca.h"
#include "budget.h"
#include "buf.h"
#include "conn.h"
#include "console.h"
#include "ferry.h"
#include "health.h"
#include "probe.h"
#include "sticky.h"
#include "listener.h"
#include "log.h"
#include "origin_tls.h"
#include "hclient.h"
#include "loop.h"
#include "timer.h"
#include "pg.h"
#include "metrics.h"
#include "mint.h"
#include "proxy.h"
#include "rate.h"
#include "resolve.h"
#include "retry.h"
#include "uppool.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define FERRY_VERSION "0.1.0"
#define DRAIN_SECS 10.0

struct ev_loop *loop;

static ev_signal sig_term, sig_int, sig_hup, sig_usr1;
static ev_prepare flush_watch;
static ev_timer drain_timer;
static int stopping;
static const char *config_path;

int ferry_draining(void)
{
    return stopping;
}

const char *ferry_config_path(void)
{
    return config_path != NULL ? config_path : "";
}

const char *ferry_version_string(void)
{
    return FERRY_VERSION;
}

double ferry_now(void)
{
    return ev_now(loop);
}

void ferry_set_timeouts(int client_head_ms, int connect_ms, int first_byte_ms, int idle_ms,
                        int keepalive_ms, int request_ms, int upstream_idle_ms)
{
    if (upstream_idle_ms > 0) {
        timeouts.upstream_idle = upstream_idle_ms / 1000.0;
    }
    if (client_head_ms > 0) {
        timeouts.client_head = client_head_ms / 1000.0;
    }
    if (connect_ms > 0) {
        timeouts.connect = connect_ms / 1000.0;
    }
    if (first_byte_ms > 0) {
        timeouts.first_byte = first_byte_ms / 1000.0;
    }
    if (idle_ms > 0) {
        timeouts.idle = idle_ms / 1000.0;
    }
    if (keepalive_ms > 0) {
        timeouts.keepalive = keepalive_ms / 1000.0;
    }
    if (request_ms > 0) {
        timeouts.request = request_ms / 1000.0;
    }
}

void ferry_set_log(int level, int access)
{
    log_level_min = level;
    log_access_on = access;
}

int ferry_set_log_files(const char *events, const char *access, const char **err)
{
    return log_set_files(events, access, err) == 0 ? FERRY_OK : FERRY_ERROR;
}

void ferry_log(int level, const char *code, const char *msg)
{
    log_event(level, code, NULL, "%s", msg);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ferry [run] -c FILE      run in the foreground\n"
            "       ferry check -c FILE      validate a config\n"
            "       ferry console [-s SOCKET] [-e EXPR]   the running daemon's console\n"
            "       ferry ca init DIR [--name-constraint DOMAIN]... [--days N] [--subject S]\n"
            "                                the CA for interception (ferry ca --help)\n"
            "       ferry version\n");
}

/* The install root: FERRY_HOME, else the parent of bin/. */
static void find_root(char *root, size_t n)
{
    const char *env = getenv("FERRY_HOME");
    if (env != NULL && *env != '\0') {
        snprintf(root, n, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (k <= 0) {
        snprintf(root, n, ".");
        return;
    }
    exe[k] = '\0';
    char *dir = dirname(exe);  /* .../bin */
    snprintf(root, n, "%s", dirname(dir));
}

static void on_flush(struct ev_loop *l, ev_prepare *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    log_flush();
}

static void on_drain_tick(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)revents;
    static double started;
    if (started == 0) {
        started = ev_now(l);
    }
    /* Admin connections (a scraper's keep-alive) do not hold the drain. */
    int busy = listener_proxy_conns();
    /* The runtime may hold the loop a little longer (bounded by itself
     * and by DRAIN_SECS): a fleet node says it stops. */
    int hold = bridge_drain(busy);
    if ((busy == 0 && !hold) || ev_now(l) - started >= DRAIN_SECS) {
        if (busy > 0) {
            log_event(LOG_WARN, "FERRY-0004", NULL,
                      "drain timeout: closing %d connections", busy);
        }
        ev_timer_stop(l, w);
        ev_break(l, EVBREAK_ALL);
    }
}

static void on_stop(struct ev_loop *l, ev_signal *w, int revents)
{
    (void)revents;
    if (stopping) {
        ev_break(l, EVBREAK_ALL); /* a second signal: stop now */
        return;
    }
    stopping = 1;
    log_event(LOG_INFO, "FERRY-0003", NULL, "signal %d: stop accepting, draining", w->signum);
    /* The admin plane stays up while draining, so /health can say 503. */
    listener_stop_proxying();
    ev_timer_init(&drain_timer, on_drain_tick, 0., 0.1);
    ev_timer_start(l, &drain_timer);
}

/* SIGHUP: the runtime validates the whole new config (plugins and
 * exchange scripts included) before it switches; on any error the old
 * config keeps serving. */
static void on_hup(struct ev_loop *l, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    char err[2048];
    if (stopping) {
        return;
    }
    ev_tstamp t0 = ev_time();
    if (bridge_reload(config_path, err, sizeof(err)) != 0) {
        log_event(LOG_ERROR, "FERRY-0102", NULL, "reload failed, keeping the running config: %s",
                  err);
        return;
    }
    ev_now_update(l);
    log_event(LOG_INFO, "FERRY-0101", NULL, "reloaded %s in %.1f ms", config_path,
              (ev_time() - t0) * 1000.0);
}

/* SIGTERM/SIGINT as they arrive, even while Lua keeps the loop busy: a
 * long evaluation (a reload, a console line) reads the stop through its
 * budget hook and ends; libev then runs on_stop as usual. */
static void on_stop_signal(int signum)
{
    budget_request_stop();
    ev_feed_signal(signum);
}

static void catch_stop_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

static void on_usr1(struct ev_loop *l, ev_signal *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    log_reopen(); /* logrotate moved the files: write to new ones by the same names */
}

static int cmd_run(const char *config, int check_only)
{
    config_path = config;
    char root[PATH_MAX], err[2048];
    find_root(root, sizeof(root));
    loop = ev_default_loop(EVFLAG_AUTO);
    if (loop == NULL) {
        fprintf(stderr, "ferry: cannot start the event loop\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    /* A proxy holds two sockets (and, tunnelling, two pipes) per client. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    metrics_start(FERRY_VERSION);
    if (!check_only && resolve_init() != 0) {
        fprintf(stderr, "ferry: cannot start the resolver\n");
        return 1;
    }
    if (bridge_init(root, err, sizeof(err)) != 0) {
        fprintf(stderr, "ferry: cannot load the runtime from %s/lua: %s\n", root, err);
        return 1;
    }
    if (!check_only) {
        /* Before the load opens the listeners: a HUP or USR1 sent as soon
         * as a port answers must wait for the loop, not kill the process
         * by its default action.  Callbacks run only inside ev_run. */
        ev_signal_init(&sig_term, on_stop, SIGTERM);
        ev_signal_init(&sig_int, on_stop, SIGINT);
        ev_signal_init(&sig_hup, on_hup, SIGHUP);
        ev_signal_init(&sig_usr1, on_usr1, SIGUSR1);
        ev_signal_start(loop, &sig_term);
        ev_signal_start(loop, &sig_int);
        ev_signal_start(loop, &sig_hup);
        ev_signal_start(loop, &sig_usr1);
        catch_stop_signals(); /* after libev installed its own handlers */
    }
    if (bridge_load(config, !check_only, err, sizeof(err)) != 0) {
        log_flush();
        fprintf(stderr, "%s\n", err);
        bridge_fini();
        return 1;
    }
    if (check_only) {
        printf("%s: ok\n", config);
        bridge_fini();
        return 0;
    }
    ev_prepare_init(&flush_watch, on_flush);
    ev_prepare_start(loop, &flush_watch);
    log_event(LOG_INFO, "FERRY-0002", NULL, "ferry %s running (pid %d, config %s)",
              FERRY_VERSION, (int)getpid(), config);
    log_flush();
    ev_run(loop, 0);
    timer_stop_all(); /* no Lua callback runs once the loop is done */
    conn_close_all();
    hclient_free_all();
    cache_free_all();
    uppool_free_all();
    retry_free_all();
    conn_reverse_free();
    rate_free_all();
    origin_tls_free_all();
    listener_close_all();
    bridge_stop(); /* the runtime persists what it must (last known health) */
    pg_stop_all(); /* after the runtime counted what it could not send */
    log_event(LOG_INFO, "FERRY-0005", NULL, "stopped");
    log_flush();
    bridge_fini();
    resolve_fini();
    probe_stop_all();
    sticky_free_all();
    mint_free_all();
    health_free_all();
    metrics_free_all();
    proxy_free_all();
    buf_pool_drain();
    http_fields_drain();
    ev_loop_destroy(loop);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = "run";
    const char *config = NULL;
    int i = 1;
    if (argc > 1 && argv[1][0] != '-') {
        cmd = argv[1];
        i = 2;
    }
    if (strcmp(cmd, "console") == 0) {
        return console_main(argc - i, argv + i);
    }
    if (strcmp(cmd, "ca") == 0) {
        return ca_main(argc - i, argv + i);
    }
    for (; i < argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
            config = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "ferry: unknown argument \"%s\"\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (strcmp(cmd, "version") == 0) {
        printf("ferry %s\n", FERRY_VERSION);
        return 0;
    }
    if (strcmp(cmd, "run") != 0 && strcmp(cmd, "check") != 0) {
        fprintf(stderr, "ferry: unknown command \"%s\"\n", cmd);
        usage(stderr);
        return 2;
    }
    if (config == NULL) {
        fprintf(stderr, "ferry: %s needs -c FILE\n", cmd);
        usage(stderr);
        return 2;
    }
    return cmd_run(config, strcmp(cmd, "check") == 0);
}
