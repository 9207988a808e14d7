/* console.c - `ferry console`: the client of the daemon's console socket.
 *
 * Each line the user types goes to the daemon's console endpoint
 * (console_http.c: HTTP/1.1 on a unix socket, one connection for the
 * session, a deadline per line) and comes back as 2xx with what the line
 * printed (text/plain), or as an error status with a JSON body
 * {"error":"FERRY-xxxx","message":"..."}.  This file is the command: its
 * options, the lines (-e, a terminal, or stdin), and how answers print.
 *
 * This is a separate short-lived process, not the daemon.  The deadline
 * per line is FERRY_CONSOLE_TIMEOUT seconds (default 10).
 *
 * On a terminal the line editor is libedit: history in ~/.ferry_history
 * (FERRY_HISTORY overrides, an empty value turns it off; 1000 entries),
 * TAB completes command names.  Otherwise stdin is read line by line.
 *
 * Exit status: 0 all answered, 1 the daemon answered an error, 2 usage
 * or no answer (cannot connect, a socket that is not this user's daemon,
 * timeout, connection lost, not HTTP). */
#include "console.h"
#include "console_http.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <histedit.h>
#include <locale.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/tmp/ferry.sock"
#define DEFAULT_TIMEOUT 10.0             /* seconds per line: send, wait, read */
#define MAX_LINE ((size_t)1 << 20)       /* one console line sent */
#define HISTORY_SIZE 1000

/* Ctrl-C in the interactive session: while an answer is awaited it is
 * SIGINT, which sets client_interrupted and abandons the wait; while a
 * line is typed it is a key (cancel_line), which sets cancelled. */
static int cancelled;

static void on_sigint(int sig)
{
    (void)sig;
    client_interrupted = 1;
}

static const char *const commands[] = {
    "proxy.list", "proxy.health", "proxy.add", "proxy.remove", "proxy.enable",
    "proxy.disable", "pool.list", "pool.stats", "exchange.list", "reload",
    "stats", "help", "reset", "node.list", "node.self",
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

/* ---- answers ---------------------------------------------------------- */

static void put_utf8(struct cbuf *b, unsigned cp)
{
    char s[4];
    size_t n;
    if (cp < 0x80) {
        s[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        s[0] = (char)(0xC0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        s[0] = (char)(0xE0 | (cp >> 12));
        s[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        s[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        s[0] = (char)(0xF0 | (cp >> 18));
        s[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        s[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        s[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    cbuf_append(b, s, n);
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        if (!isxdigit((unsigned char)p[i])) {
            return -1;
        }
        v = v * 16 + (unsigned)(isdigit((unsigned char)p[i]) ? p[i] - '0'
                                                             : tolower((unsigned char)p[i]) - 'a' + 10);
    }
    *out = v;
    return 0;
}

/* The string value of a top-level "key" of a JSON object, decoded into
 * out; -1 when there is none.  Enough for the daemon's error bodies. */
static int json_string_field(const char *json, const char *key, struct cbuf *out)
{
    size_t kn = strlen(key);
    for (const char *p = strchr(json, '"'); p != NULL; p = strchr(p + 1, '"')) {
        if (strncmp(p + 1, key, kn) != 0 || p[1 + kn] != '"') {
            continue;
        }
        const char *before = p;
        while (before > json && isspace((unsigned char)before[-1])) {
            before--;
        }
        if (before == json || (before[-1] != '{' && before[-1] != ',')) {
            continue;
        }
        const char *v = p + kn + 2;
        while (isspace((unsigned char)*v)) {
            v++;
        }
        if (*v++ != ':') {
            continue;
        }
        while (isspace((unsigned char)*v)) {
            v++;
        }
        if (*v++ != '"') {
            return -1;
        }
        out->len = 0;
        for (;;) {
            char ch = *v++;
            if (ch == '\0') {
                return -1;
            }
            if (ch == '"') {
                return cbuf_append(out, "", 0);
            }
            if (ch != '\\') {
                cbuf_append(out, &ch, 1);
                continue;
            }
            unsigned cp;
            switch (*v++) {
            case '"': ch = '"'; break;
            case '\\': ch = '\\'; break;
            case '/': ch = '/'; break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u':
                if (hex4(v, &cp) != 0) {
                    return -1;
                }
                v += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && v[0] == '\\' && v[1] == 'u') {
                    unsigned lo;
                    if (hex4(v + 2, &lo) == 0 && lo >= 0xDC00 && lo < 0xE000) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        v += 6;
                    }
                }
                put_utf8(out, cp);
                continue;
            default:
                return -1;
            }
            cbuf_append(out, &ch, 1);
        }
    }
    return -1;
}

/* Print an answer: the body to stdout, or the error to stderr. */
static int show_answer(const struct answer *a)
{
    const struct cbuf *b = &a->body;
    if (a->status >= 200 && a->status < 300) {
        if (b->len > 0) {
            fwrite(b->p, 1, b->len, stdout);
            if (b->p[b->len - 1] != '\n') {
                fputc('\n', stdout);
            }
        }
        fflush(stdout);
        return CONSOLE_EXIT_OK;
    }
    struct cbuf msg = { 0 };
    fflush(stdout);
    if (b->len > 0 && json_string_field(b->p, "message", &msg) == 0) {
        fprintf(stderr, "error: %s\n", msg.p);
    } else {
        size_t n = b->len;
        while (n > 0 && isspace((unsigned char)b->p[n - 1])) {
            n--;
        }
        fprintf(stderr, "error: the daemon answered %d%s%.*s\n", a->status, n > 0 ? ": " : "",
                (int)(n > 512 ? 512 : n), n > 0 ? b->p : "");
    }
    cbuf_free(&msg);
    return CONSOLE_EXIT_ERROR;
}

/* Send one line and print its answer; returns an exit status. */
static int eval_line(struct client *c, const char *line)
{
    size_t n = strlen(line);
    if (n > MAX_LINE) {
        fprintf(stderr, "error: the line is longer than %zu KiB\n", MAX_LINE >> 10);
        return CONSOLE_EXIT_ERROR;
    }
    struct answer a = { 0 };
    c->why = NULL;
    int rc = client_roundtrip(c, line, n, &a);
    int status;
    if (rc != IO_OK) {
        client_report(c, rc);
        status = CONSOLE_EXIT_NOANSWER;
    } else {
        status = show_answer(&a);
    }
    cbuf_free(&a.body);
    return status;
}

/* ---- lines ------------------------------------------------------------ */

/* Trim in place; returns the start of the trimmed text. */
static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) {
        s++;
    }
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1])) {
        s[--n] = '\0';
    }
    return s;
}

static int is_exit(const char *s)
{
    return strcmp(s, "exit") == 0 || strcmp(s, "quit") == 0 || strcmp(s, "exit()") == 0 ||
           strcmp(s, "quit()") == 0;
}

/* stdin is not a terminal: each line is evaluated, without prompts.  A
 * line the daemon refuses is reported and the next one runs; losing the
 * daemon ends it. */
static int run_lines(struct client *c, FILE *in)
{
    char *raw = NULL;
    size_t cap = 0;
    int worst = CONSOLE_EXIT_OK;
    while (getline(&raw, &cap, in) >= 0) {
        char *line = trim(raw);
        if (*line == '\0') {
            continue;
        }
        if (is_exit(line)) {
            break;
        }
        int st = eval_line(c, line);
        if (st > worst) {
            worst = st;
        }
        if (st == CONSOLE_EXIT_NOANSWER) {
            break;
        }
    }
    free(raw);
    return worst;
}

/* ---- the interactive session ------------------------------------------ */

static char *prompt(EditLine *el)
{
    static char text[] = "ferry> ";
    (void)el;
    return text;
}

static int is_word(int ch)
{
    return isalnum(ch) || ch == '_' || ch == '.';
}

/* TAB: complete the command name before the cursor; with several
 * candidates, extend to their common prefix or list them. */
static unsigned char complete(EditLine *el, int ch)
{
    (void)ch;
    const LineInfo *li = el_line(el);
    const char *start = li->cursor;
    while (start > li->buffer && is_word((unsigned char)start[-1])) {
        start--;
    }
    size_t len = (size_t)(li->cursor - start);
    const char *match[N_COMMANDS];
    size_t n = 0;
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strncmp(commands[i], start, len) == 0) {
            match[n++] = commands[i];
        }
    }
    if (n == 0) {
        return CC_ERROR;
    }
    size_t common = strlen(match[0]);
    for (size_t i = 1; i < n; i++) {
        size_t j = 0;
        while (j < common && match[i][j] == match[0][j]) {
            j++;
        }
        common = j;
    }
    if (common > len) {
        char add[64];
        snprintf(add, sizeof(add), "%.*s", (int)(common - len), match[0] + len);
        return el_insertstr(el, add) == 0 ? CC_REFRESH : CC_ERROR;
    }
    if (n == 1) {
        return CC_NORM; /* already complete */
    }
    FILE *out = stdout;
    fputc('\n', out);
    for (size_t i = 0; i < n; i++) {
        fprintf(out, "%s%s", i ? "  " : "", match[i]);
    }
    fputc('\n', out);
    fflush(out);
    return CC_REDISPLAY;
}

/* Ctrl-C while typing: el_gets returns, the line is dropped. */
static unsigned char cancel_line(EditLine *el, int ch)
{
    (void)el;
    (void)ch;
    cancelled = 1;
    return CC_NEWLINE;
}

/* Ctrl-Z while typing: stop like a shell job (EL_SIGNAL restores the
 * terminal around it). */
static unsigned char suspend(EditLine *el, int ch)
{
    (void)el;
    (void)ch;
    raise(SIGTSTP);
    return CC_REDISPLAY;
}

/* The history file: FERRY_HISTORY (empty: none), else ~/.ferry_history. */
static char *history_path(void)
{
    const char *env = getenv("FERRY_HISTORY");
    if (env != NULL) {
        return *env ? strdup(env) : NULL;
    }
    const char *home = getenv("HOME");
    if (home == NULL || *home == '\0') {
        const struct passwd *pw = getpwuid(getuid());
        home = pw != NULL ? pw->pw_dir : NULL;
    }
    if (home == NULL || *home == '\0') {
        return NULL;
    }
    size_t n = strlen(home) + sizeof("/.ferry_history");
    char *p = malloc(n);
    if (p != NULL) {
        snprintf(p, n, "%s/.ferry_history", home);
    }
    return p;
}

/* Lines may hold credentials (proxy.add): the file is private. */
static void history_store(History *h, const char *path, int *warned)
{
    HistEvent ev;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    int ok = f != NULL && history(h, &ev, H_SAVE_FP, f) >= 0;
    if (f != NULL) {
        ok = (fclose(f) == 0) && ok;
    } else if (fd >= 0) {
        close(fd);
    }
    if (!ok && !*warned) {
        fprintf(stderr, "ferry console: cannot write the history to %s: %s\n", path,
                strerror(errno));
        *warned = 1;
    }
}

static int run_tty(struct client *c)
{
    HistEvent ev;
    int warned = 0;
    setlocale(LC_CTYPE, "");
    char *hpath = history_path();
    History *hist = history_init();
    if (hist == NULL) {
        fprintf(stderr, "ferry console: cannot start the line editor\n");
        free(hpath);
        return CONSOLE_EXIT_NOANSWER;
    }
    history(hist, &ev, H_SETSIZE, HISTORY_SIZE);
    history(hist, &ev, H_SETUNIQUE, 1);
    if (hpath != NULL) {
        history(hist, &ev, H_LOAD, hpath); /* a missing file is a first session */
    }
    EditLine *el = el_init("ferry", stdin, stdout, stderr);
    if (el == NULL) {
        fprintf(stderr, "ferry console: cannot start the line editor\n");
        history_end(hist);
        free(hpath);
        return CONSOLE_EXIT_NOANSWER;
    }
    /* Ctrl-C drops the answer being waited for (SIGINT; no SA_RESTART,
     * so the poll sees it) or the line being typed (a key: the editor's
     * terminal mode has no ISIG, Ctrl-Z is a key too), not the session. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    el_set(el, EL_EDITOR, "emacs");
    el_set(el, EL_SIGNAL, 1); /* the terminal is restored on signals */
    el_set(el, EL_SETTY, "-d", "-isig", NULL);
    el_set(el, EL_PROMPT, prompt);
    el_set(el, EL_HIST, history, hist);
    el_set(el, EL_ADDFN, "ferry-complete", "Complete a ferry command name", complete);
    el_set(el, EL_BIND, "^I", "ferry-complete", NULL);
    el_set(el, EL_ADDFN, "ferry-cancel", "Drop the line being typed", cancel_line);
    el_set(el, EL_BIND, "^C", "ferry-cancel", NULL);
    el_set(el, EL_ADDFN, "ferry-suspend", "Suspend the console", suspend);
    el_set(el, EL_BIND, "^Z", "ferry-suspend", NULL);
    el_source(el, NULL); /* ~/.editrc, if any */
    printf("ferry console on %s; help() lists the commands, exit or Ctrl-D ends\n", c->path);
    fflush(stdout);
    for (;;) {
        int count = 0;
        cancelled = 0;
        const char *got = el_gets(el, &count);
        client_interrupted = 0;
        if (cancelled) {
            fputs("^C\n", stdout); /* a fresh prompt */
            continue;
        }
        if (got == NULL || count <= 0) {
            fputc('\n', stdout);
            break;
        }
        char *copy = strdup(got);
        if (copy == NULL) {
            break;
        }
        char *line = trim(copy);
        if (*line == '\0') {
            free(copy);
            continue;
        }
        if (is_exit(line)) {
            free(copy);
            break;
        }
        history(hist, &ev, H_ENTER, line);
        if (hpath != NULL) {
            history_store(hist, hpath, &warned);
        }
        eval_line(c, line); /* errors are printed; the session goes on */
        free(copy);
    }
    el_end(el);
    history_end(hist);
    free(hpath);
    return CONSOLE_EXIT_OK;
}

/* ---- the command ------------------------------------------------------ */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ferry console [-s SOCKET] [-e EXPR]...\n"
            "  -s, --socket SOCKET  the daemon's console socket (default: $FERRY_SOCKET,\n"
            "                       else " DEFAULT_SOCKET ")\n"
            "  -e, --eval EXPR      evaluate EXPR, print the answer and exit\n"
            "without -e: a REPL on a terminal, else one line of stdin at a time\n");
}

int console_main(int argc, char **argv)
{
    const char *path = NULL;
    const char **exprs = calloc((size_t)argc + 1, sizeof(*exprs));
    int n_exprs = 0;
    if (exprs == NULL) {
        fprintf(stderr, "ferry console: out of memory\n");
        return CONSOLE_EXIT_NOANSWER;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if ((strcmp(a, "-s") == 0 || strcmp(a, "--socket") == 0) && has_value) {
            path = argv[++i];
        } else if ((strcmp(a, "-e") == 0 || strcmp(a, "--eval") == 0) && has_value) {
            exprs[n_exprs++] = argv[++i];
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            free(exprs);
            return CONSOLE_EXIT_OK;
        } else {
            int wants_value = strcmp(a, "-s") == 0 || strcmp(a, "--socket") == 0 ||
                              strcmp(a, "-e") == 0 || strcmp(a, "--eval") == 0;
            fprintf(stderr, "ferry console: %s \"%s\"\n",
                    wants_value ? "a value is missing after" :
                    a[0] == '-' ? "unknown option" : "unknown argument", a);
            usage(stderr);
            free(exprs);
            return CONSOLE_EXIT_NOANSWER;
        }
    }
    if (path == NULL) {
        path = getenv("FERRY_SOCKET");
    }
    if (path == NULL || *path == '\0') {
        path = DEFAULT_SOCKET;
    }
    struct client c = { .path = path, .fd = -1, .timeout = DEFAULT_TIMEOUT };
    const char *t = getenv("FERRY_CONSOLE_TIMEOUT");
    if (t != NULL && *t != '\0') {
        char *end;
        double v = strtod(t, &end);
        if (*end == '\0' && v > 0 && v <= 86400) {
            c.timeout = v;
        }
    }
    int rc = client_connect(&c);
    if (rc != IO_OK) {
        client_report(&c, rc);
        free(exprs);
        return CONSOLE_EXIT_NOANSWER;
    }
    int status = CONSOLE_EXIT_OK;
    if (n_exprs > 0) {
        for (int i = 0; i < n_exprs && status != CONSOLE_EXIT_NOANSWER; i++) {
            int st = eval_line(&c, exprs[i]);
            if (st > status) {
                status = st;
            }
        }
    } else if (isatty(STDIN_FILENO)) {
        status = run_tty(&c);
    } else {
        status = run_lines(&c, stdin);
    }
    client_close(&c);
    cbuf_free(&c.in);
    free(exprs);
    return status;
}
