/*
 * Runs the fuzz driver over the files named on the command line, for builds without libFuzzer
 * (gcc): the seed corpus then serves as a regression test of the parsers.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    int passed = 0;

    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (f == NULL) {
            fprintf(stderr, "replay: cannot open %s\n", argv[i]);
            return 1;
        }
        static uint8_t buf[1 << 20];
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, n); /* aborts on a contract violation */
        passed++;
    }
    printf("%d passed, 0 failed\n", passed);
    return passed == argc - 1 ? 0 : 1;
}
