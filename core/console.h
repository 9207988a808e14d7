/* console.h - `ferry console`: the REPL client of the daemon's console socket. */
#ifndef FERRY_CONSOLE_H
#define FERRY_CONSOLE_H

/* Exit statuses of `ferry console`. */
#define CONSOLE_EXIT_OK 0       /* every line answered 2xx */
#define CONSOLE_EXIT_ERROR 1    /* the daemon answered an error to a line */
#define CONSOLE_EXIT_NOANSWER 2 /* usage error, or no answer: cannot connect, timeout, lost */

/* argv holds the options after the word "console" (argc of them).
 * Returns the exit status. */
int console_main(int argc, char **argv);

#endif
