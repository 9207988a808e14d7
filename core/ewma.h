/* ewma.h - the one way ferry smooths a latency: an exponentially
 * weighted moving average, used for a proxy's connect time and for a
 * (proxy, exchange) pair's response time alike. */
#ifndef FERRY_EWMA_H
#define FERRY_EWMA_H

/* Weight of a new sample: about the last three samples dominate. */
#define EWMA_ALPHA 0.3
/* The smallest average kept: 0 means "no sample yet". */
#define EWMA_FLOOR_MS 0.001

/* Fold sample_ms (>= 0) into *avg_ms; the first sample is taken as is. */
static inline void ewma_latency(double *avg_ms, double sample_ms)
{
    if (*avg_ms <= 0) {
        *avg_ms = sample_ms > EWMA_FLOOR_MS ? sample_ms : EWMA_FLOOR_MS;
    } else {
        *avg_ms += EWMA_ALPHA * (sample_ms - *avg_ms);
    }
}

#endif
