/* cache_policy_date.c - HTTP-date (RFC 9110 5.6.7): the three forms a
 * recipient must accept, and IMF-fixdate out.
 *
 * Civil dates are converted with plain day arithmetic on the proleptic
 * Gregorian calendar (no timegm: no locale, no TZ, no range limits of
 * time_t), so the parser and the formatter are exact inverses over
 * years 1..9999. */
#include "cache_policy.h"

#include <math.h>
#include <string.h>

static const char cd_days[7][4] = { "Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed" };
static const char *const cd_days_long[7] = { "Thursday", "Friday", "Saturday", "Sunday",
                                              "Monday", "Tuesday", "Wednesday" };
static const char cd_months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

/* Seconds from 1970-01-01 to 0001-01-01 and to 9999-12-31 23:59:59. */
#define CD_MIN (-62135596800.0)
#define CD_MAX 253402300799.0

static int cd_leap(long y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int cd_mdays(long y, int m)
{
    static const int n[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    return m == 2 && cd_leap(y) ? 29 : n[m - 1];
}

/* Days from 1970-01-01 to y-m-d.  Years are shifted to start in March,
 * so the leap day is the last day of the shifted year. */
static long cd_days_from_civil(long y, int m, int d)
{
    long yy = m <= 2 ? y - 1 : y;
    long era = (yy >= 0 ? yy : yy - 399) / 400;
    long yoe = yy - era * 400;                       /* 0..399 */
    long mp = m > 2 ? m - 3 : m + 9;                 /* March = 0 */
    long doy = (153 * mp + 2) / 5 + d - 1;           /* 0..365 */
    long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; /* 0..146096 */
    return era * 146097 + doe - 719468;
}

static void cd_civil_from_days(long z, long *y, int *m, int *d)
{
    z += 719468;
    long era = (z >= 0 ? z : z - 146096) / 146097;
    long doe = z - era * 146097;
    long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

/* Day of week of a day count, as an index of cd_days (1970-01-01 was a
 * Thursday). */
static int cd_wday(long days)
{
    long w = days % 7;
    return (int)(w < 0 ? w + 7 : w);
}

/* A cursor over the date text. */
struct cd_in {
    const char *p, *end;
};

static int cd_lit(struct cd_in *in, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(in->end - in->p) < n || memcmp(in->p, s, n) != 0) {
        return 0;
    }
    in->p += n;
    return 1;
}

/* Exactly n digits. */
static int cd_digits(struct cd_in *in, int n, long *v)
{
    long x = 0;
    if (in->end - in->p < n) {
        return 0;
    }
    for (int i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in->p[i];
        if (c < '0' || c > '9') {
            return 0;
        }
        x = x * 10 + (c - '0');
    }
    in->p += n;
    *v = x;
    return 1;
}

static int cd_month(struct cd_in *in, int *m)
{
    for (int i = 0; i < 12; i++) {
        if (cd_lit(in, cd_months[i])) {
            *m = i + 1;
            return 1;
        }
    }
    return 0;
}

/* time-of-day = hour ":" minute ":" second; second may be 60 (a leap
 * second), which counts into the next minute. */
static int cd_time(struct cd_in *in, long *secs)
{
    long h, mi, s;
    if (!cd_digits(in, 2, &h) || !cd_lit(in, ":") || !cd_digits(in, 2, &mi) ||
        !cd_lit(in, ":") || !cd_digits(in, 2, &s)) {
        return 0;
    }
    if (h > 23 || mi > 59 || s > 60) {
        return 0;
    }
    *secs = h * 3600 + mi * 60 + s;
    return 1;
}

/* Assemble and check: the day exists in its month, and the day name
 * (wd, an index of cd_days; -1: not checked) is that of the date. */
static int cd_make(long y, int m, long d, long secs, int wd, double *t)
{
    if (y < 1 || y > 9999 || d < 1 || d > cd_mdays(y, m)) {
        return 0;
    }
    long days = cd_days_from_civil(y, m, (int)d);
    if (wd >= 0 && cd_wday(days) != wd) {
        return 0;
    }
    *t = (double)days * 86400.0 + (double)secs;
    return 1;
}

/* IMF-fixdate after its day name: ", 06 Nov 1994 08:49:37 GMT". */
static int cd_imf(struct cd_in *in, int wd, double *t)
{
    long d, y, secs;
    int m;
    if (!cd_lit(in, ", ") || !cd_digits(in, 2, &d) || !cd_lit(in, " ") || !cd_month(in, &m) ||
        !cd_lit(in, " ") || !cd_digits(in, 4, &y) || !cd_lit(in, " ") || !cd_time(in, &secs) ||
        !cd_lit(in, " GMT")) {
        return 0;
    }
    return cd_make(y, m, d, secs, wd, t);
}

/* asctime after its day name: " Nov  6 08:49:37 1994". */
static int cd_asctime(struct cd_in *in, int wd, double *t)
{
    long d, y, secs;
    int m;
    if (!cd_lit(in, " ") || !cd_month(in, &m) || !cd_lit(in, " ")) {
        return 0;
    }
    if (!cd_lit(in, " ") || !cd_digits(in, 1, &d)) {
        if (!cd_digits(in, 2, &d)) {
            return 0;
        }
    }
    if (!cd_lit(in, " ") || !cd_time(in, &secs) || !cd_lit(in, " ") || !cd_digits(in, 4, &y)) {
        return 0;
    }
    return cd_make(y, m, d, secs, wd, t);
}

/* RFC 850 after its long day name: ", 06-Nov-94 08:49:37 GMT".  The
 * century is the one that puts the date no more than 50 years after
 * now. */
static int cd_rfc850(struct cd_in *in, int wd, double now, double *t)
{
    long d, yy, secs;
    int m;
    if (!cd_lit(in, ", ") || !cd_digits(in, 2, &d) || !cd_lit(in, "-") || !cd_month(in, &m) ||
        !cd_lit(in, "-") || !cd_digits(in, 2, &yy) || !cd_lit(in, " ") || !cd_time(in, &secs) ||
        !cd_lit(in, " GMT")) {
        return 0;
    }
    long ny;
    int nm, nd;
    double n = isfinite(now) ? fmin(fmax(now, CD_MIN), CD_MAX) : 0.0;
    cd_civil_from_days((long)floor(n / 86400.0), &ny, &nm, &nd);
    long y = ny - ny % 100 + yy;
    if (y > ny + 50) {
        y -= 100;
    }
    /* The same rule on the exact instant: a date more than 50 years
     * ahead, within the year that is 50 years ahead, also goes back.
     * The day name is checked against the year finally chosen. */
    if (cd_make(y, m, d, secs, -1, t) && *t > n + 50.0 * 365.2425 * 86400.0) {
        y -= 100;
    }
    return cd_make(y, m, d, secs, wd, t);
}

static int cd_ws(char c)
{
    return c == ' ' || c == '\t';
}

int cpol_date_parse(const char *s, size_t n, double now, double *t)
{
    if (s == NULL) {
        return -1;
    }
    struct cd_in in = { s, s + n };
    double v = 0;
    int ok = 0;
    while (in.p < in.end && cd_ws(*in.p)) {
        in.p++;
    }
    while (in.end > in.p && cd_ws(in.end[-1])) {
        in.end--;
    }
    for (int wd = 0; wd < 7 && !ok; wd++) {
        struct cd_in at = in;
        if (cd_lit(&at, cd_days_long[wd])) {
            ok = cd_rfc850(&at, wd, now, &v) && at.p == at.end;
        } else if (cd_lit(&at, cd_days[wd])) {
            struct cd_in alt = at;
            ok = cd_imf(&at, wd, &v) && at.p == at.end;
            if (!ok) {
                ok = cd_asctime(&alt, wd, &v) && alt.p == alt.end;
            }
        }
    }
    if (!ok) {
        return -1;
    }
    *t = v;
    return 0;
}

static void cd_put2(char *p, long v)
{
    p[0] = (char)('0' + v / 10 % 10);
    p[1] = (char)('0' + v % 10);
}

size_t cpol_date_format(double t, char *out)
{
    double c = isfinite(t) ? floor(t) : 0.0;
    c = fmin(fmax(c, CD_MIN), CD_MAX);
    long days = (long)floor(c / 86400.0);
    long secs = (long)(c - (double)days * 86400.0);
    long y;
    int m, d;
    cd_civil_from_days(days, &y, &m, &d);
    memcpy(out, cd_days[cd_wday(days)], 3);
    memcpy(out + 3, ", ", 2);
    cd_put2(out + 5, d);
    out[7] = ' ';
    memcpy(out + 8, cd_months[m - 1], 3);
    out[11] = ' ';
    cd_put2(out + 12, y / 100);
    cd_put2(out + 14, y % 100);
    out[16] = ' ';
    cd_put2(out + 17, secs / 3600);
    out[19] = ':';
    cd_put2(out + 20, secs / 60 % 60);
    out[22] = ':';
    cd_put2(out + 23, secs % 60);
    memcpy(out + 25, " GMT", 5); /* with the NUL */
    return CPOL_DATE_LEN;
}
