/* The reference init for the cold-start benchmark: the least a guest can
 * run as PID 1. It says it is ready on the console, as the agent does, and
 * then waits, so that the benchmark can read the VM's counters at that
 * point before it stops the VMM. Built static by bench/coldstart.sh. */
#include <unistd.h>

int main(void)
{
    static const char line[] = "tiny-init ready\n";
    write(1, line, sizeof line - 1);
    for (;;)
        pause();
}
