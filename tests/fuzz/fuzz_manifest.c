/* Fuzz target: the manifest loader on arbitrary YAML. Whatever the input, it loads or it
 * fails with a message that starts with the file's name. */
#include "conf/conf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(path, sizeof path, "/tmp/wapphook-fuzz-manifest-%d.yaml", (int)getpid());
    setenv("FUZZ_SECRET", "s", 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wh_config *cfg = NULL;
    char err[WH_ERR_LEN];
    FILE *f = fopen(path, "wb");

    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    if (manifest_load(path, &cfg, err, sizeof err) == 0)
        manifest_free(cfg);
    else if (strncmp(err, path, strlen(path)) != 0)
        __builtin_trap(); /* every refusal names the file */
    return 0;
}
