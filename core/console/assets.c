/* The console's page, script and style, compiled into the binary from core/console/page/ (no
 * file on disk at run time, nothing fetched from elsewhere: it works offline). */
#include "console.h"

#include <pthread.h>
#include <string.h>

/* Each file between a start and an end symbol, NUL-terminated. */
#define EMBED(sym, file)                                                                           \
    __asm__(".section .rodata\n"                                                                   \
            ".global " #sym "\n" #sym ":\n"                                                        \
            ".incbin \"" WH_CONSOLE_PAGE "/" file "\"\n"                                           \
            ".global " #sym "_end\n" #sym "_end:\n"                                                \
            ".byte 0\n"                                                                            \
            ".previous\n");                                                                        \
    extern const char sym[], sym##_end[]

EMBED(wh_console_html, "index.html");
EMBED(wh_console_js, "console.js");
EMBED(wh_console_css, "console.css");

static struct console_asset assets[3];
static pthread_once_t assets_once = PTHREAD_ONCE_INIT;

static void assets_init(void) /* their sizes are known at link time only */
{
    assets[0] = (struct console_asset){"/", "text/html; charset=utf-8", wh_console_html,
                                       (size_t)(wh_console_html_end - wh_console_html)};
    assets[1] = (struct console_asset){"/console.js", "text/javascript; charset=utf-8",
                                       wh_console_js, (size_t)(wh_console_js_end - wh_console_js)};
    assets[2] = (struct console_asset){"/console.css", "text/css; charset=utf-8", wh_console_css,
                                       (size_t)(wh_console_css_end - wh_console_css)};
}

const struct console_asset *console_asset(const char *path)
{
    pthread_once(&assets_once, assets_init);
    for (int i = 0; i < 3; i++)
        if (strcmp(path, assets[i].path) == 0) return &assets[i];
    return NULL;
}
