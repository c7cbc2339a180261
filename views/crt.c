/* Terminal ownership (see crt.h): curses start/stop, resize and mouse. The only file that calls
 * initscr/newterm/endwin; signal handlers live in app/ui.c and only set flags.
 * Depends on curses and libc only. */
#include "crt.h"

#include <langinfo.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

static SCREEN *screen;
static FILE *off_out, *off_in;
static bool active, offscreen, atexit_done;
static bool utf8;

static void check_utf8(void)
{
    setlocale(LC_CTYPE, "");
    const char *cs = nl_langinfo(CODESET);
    utf8 = cs && (strcmp(cs, "UTF-8") == 0 || strcmp(cs, "utf8") == 0);
}

bool kvs_crt_utf8(void) { return utf8; }
bool kvs_crt_active(void) { return active; }

static void common_setup(void)
{
    if (has_colors()) {
        start_color();
        use_default_colors();
    }
    cbreak();
    noecho();
    nonl();
    intrflush(stdscr, FALSE);
    keypad(stdscr, TRUE);
    curs_set(0);
    set_escdelay(25);
}

static void at_exit(void) { kvs_crt_end(); }

/* Ctrl-S must be a key, not XOFF: with flow control on it freezes the output until Ctrl-Q, which
 * looks like a hung UI. newterm saved the shell's modes before this, so endwin brings IXON back;
 * def_prog_mode makes curses keep the change when it resumes (after a suspend). */
static void flow_control_off(void)
{
    struct termios t;
    if (tcgetattr(STDIN_FILENO, &t) != 0) return;
    t.c_iflag &= ~(tcflag_t)(IXON | IXOFF);
    if (tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0) def_prog_mode();
}

bool kvs_crt_start(bool no_mouse, char *err, size_t errlen)
{
    if (active) return true;
    check_utf8();
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        snprintf(err, errlen, "the terminal UI needs a terminal on stdin and stdout (use --batch)");
        return false;
    }
    const char *term = getenv("TERM");
    if (!term || !*term || strcmp(term, "dumb") == 0) {
        snprintf(err, errlen, "TERM is %s: the terminal UI needs a real terminal (use --batch)",
                 term && *term ? term : "unset");
        return false;
    }
    screen = newterm(NULL, stdout, stdin);
    if (!screen) {
        snprintf(err, errlen, "cannot initialise terminal '%s' (terminfo entry missing?)", term);
        return false;
    }
    set_term(screen);
    active = true;
    if (!atexit_done) { atexit(at_exit); atexit_done = true; }
    common_setup();
    flow_control_off();
    kvs_crt_mouse(!no_mouse);
    return true;
}

void kvs_crt_mouse(bool on)
{
    if (!active) return;
    if (on) {
        mousemask(BUTTON1_PRESSED | BUTTON1_CLICKED | BUTTON1_DOUBLE_CLICKED | BUTTON4_PRESSED |
                  BUTTON5_PRESSED, NULL);
        mouseinterval(200);
    } else {
        mousemask(0, NULL);
    }
}

void kvs_crt_end(void)
{
    if (!active) return;
    active = false;
    if (!offscreen) {
        mousemask(0, NULL);
        curs_set(1);
    }
    endwin();
    if (screen) delscreen(screen);
    screen = NULL;
    if (offscreen) {
        if (off_out) fclose(off_out);
        if (off_in) fclose(off_in);
        off_out = off_in = NULL;
        offscreen = false;
    } else {
        fflush(stdout);
    }
}

void kvs_crt_resize(void)
{
    if (!active || offscreen) return;
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0)
        resize_term(ws.ws_row, ws.ws_col);
    clearok(curscr, TRUE);
}

bool kvs_crt_offscreen_start(int w, int h, char *err, size_t errlen)
{
    if (active) kvs_crt_end();
    check_utf8();
    const char *term = getenv("TERM");
    if (!term || !*term || strcmp(term, "dumb") == 0) term = "xterm-256color";
    off_out = fopen("/dev/null", "w");
    off_in = fopen("/dev/null", "r");
    if (!off_out || !off_in) {
        snprintf(err, errlen, "cannot open /dev/null");
        if (off_out) fclose(off_out);
        if (off_in) fclose(off_in);
        off_out = off_in = NULL;
        return false;
    }
    screen = newterm(term, off_out, off_in);
    if (!screen) {
        snprintf(err, errlen, "newterm(%s) failed", term);
        fclose(off_out);
        fclose(off_in);
        off_out = off_in = NULL;
        return false;
    }
    set_term(screen);
    active = offscreen = true;
    common_setup();
    resize_term(h, w);
    return true;
}

void kvs_crt_offscreen_end(void) { kvs_crt_end(); }
