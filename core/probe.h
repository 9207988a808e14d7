/* probe.h - active health probes (the ferry_probe_* exports are in ferry.h). */
#ifndef FERRY_PROBE_H
#define FERRY_PROBE_H

/* Stop every probe and free its schedule (exit). */
void probe_stop_all(void);

#endif
