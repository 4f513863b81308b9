/* Run inside a container by the end-to-end tests: tries to reach the
 * agent's vsock ports (and the host's readiness port) through every CID a
 * guest process could name, and prints one line per attempt:
 *   <cid> <port> connected | refused: <error> | no-socket: <error>
 * then what PR_CAPBSET_KEEP_ONLY says ("keep-only <error>"), its bounding
 * set ("capbnd <hex>") and last its seccomp mode ("seccomp <mode>", both
 * from /proc/self/status).
 * Exit status 0 always; the test reads the lines. Built static with gcc. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

int main(void)
{
    static const unsigned int cids[] = {0, 1, 2, 3, 4, VMADDR_CID_ANY};
    static const unsigned int ports[] = {1023, 1024, 1025};
    for (unsigned int c = 0; c < sizeof cids / sizeof cids[0]; c++) {
        for (unsigned int p = 0; p < sizeof ports / sizeof ports[0]; p++) {
            int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                printf("%u %u no-socket: %s\n", cids[c], ports[p], strerror(errno));
                continue;
            }
            struct timeval timeout = {.tv_sec = 2};
            setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT_NEW, &timeout, sizeof timeout);
            struct sockaddr_vm addr = {
                .svm_family = AF_VSOCK, .svm_cid = cids[c], .svm_port = ports[p]};
            if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0)
                printf("%u %u connected\n", cids[c], ports[p]);
            else
                printf("%u %u refused: %s\n", cids[c], ports[p], strerror(errno));
            close(fd);
        }
    }
    /* The guest kernel's PR_CAPBSET_KEEP_ONLY (patch 0016) exists: without
     * CAP_SETPCAP it refuses (EPERM); a kernel without it says EINVAL. */
    int kept = prctl(0x52564d03, 0xffffffffUL, 0xffffffffUL, 0UL, 0UL);
    printf("keep-only %s\n", kept == 0 ? "done" : strerror(errno));
    char line[256];
    FILE *status = fopen("/proc/self/status", "r");
    while (status && fgets(line, sizeof line, status)) {
        if (strncmp(line, "CapBnd:", 7) == 0)
            printf("capbnd %s", line + 7 + strspn(line + 7, " \t"));
        if (strncmp(line, "Seccomp:", 8) == 0)
            printf("seccomp %s", line + 8 + strspn(line + 8, " \t"));
    }
    return 0;
}
