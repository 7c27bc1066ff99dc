#include "backoff.h"

#include <math.h>

double backoff_delay_ms(long long initial_ms, long long max_ms, int attempt, double r)
{
    double ms = (double)initial_ms * pow(2.0, attempt - 1);

    if (ms > (double)max_ms) ms = (double)max_ms;
    if (r < 0) r = 0;
    if (r > 1) r = 1;
    return ms * (0.5 + 0.5 * r);
}
