/* Terminal set-up and tear-down: the only module that calls initscr/newterm/endwin. Restores the
 * terminal on every exit path (kvs_crt_end is idempotent and registered with atexit).
 * Depends on curses and libc only. */
#ifndef KVS_CRT_H
#define KVS_CRT_H

#include "theme.h"

/* Starts curses on the controlling terminal (stdin/stdout) with wide characters, no echo, cbreak,
 * keypad, hidden cursor, and mouse unless NO_MOUSE. Returns false (terminal untouched, message in
 * err) when the terminal cannot be used. */
bool kvs_crt_start(bool no_mouse, char *err, size_t errlen);
/* Restores the terminal (safe to call any number of times, also when never started). */
void kvs_crt_end(void);
bool kvs_crt_active(void);
/* Re-reads the terminal size (after SIGWINCH) and resizes curses' screens. */
void kvs_crt_resize(void);
/* Turns mouse reporting on or off. */
void kvs_crt_mouse(bool on);
/* True when the locale's character set is UTF-8 (wide glyphs may be drawn). */
bool kvs_crt_utf8(void);

/* Off-screen curses screen of W x H cells writing to /dev/null (tests and benchmarks), with
 * TERM=xterm-256color unless TERM names a known terminal. Returns false on failure. */
bool kvs_crt_offscreen_start(int w, int h, char *err, size_t errlen);
void kvs_crt_offscreen_end(void);

#endif
