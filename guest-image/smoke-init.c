/* Minimal static /init for guest-image/smoke-test.sh: proves the guest kernel boots via PVH
 * into /init, reports the guest's uptime, CPUs and virtio devices, then reboots (triple fault
 * with reboot=t, which ends QEMU -no-reboot and which any VMM sees as a shutdown exit). */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/klog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static void cat_first_line(const char *path, char *buf, size_t n) {
    int fd = open(path, O_RDONLY);
    ssize_t r = fd >= 0 ? read(fd, buf, n - 1) : -1;
    buf[r > 0 ? r : 0] = 0;
    char *nl = strchr(buf, '\n');
    if (nl) *nl = 0;
    if (fd >= 0) close(fd);
}

int main(void) {
    char up[64], link[256], path[512];
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    cat_first_line("/proc/uptime", up, sizeof up);
    printf("HUSK-SMOKE-INIT: /init running; guest uptime %s; cpus online %ld\n", up,
           sysconf(_SC_NPROCESSORS_ONLN));
    char buf[1024];
    mkdir("/sys/fs/cgroup", 0755); /* sysfs provides it; harmless if it exists */
    if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL) == 0) {
        cat_first_line("/sys/fs/cgroup/cgroup.controllers", buf, sizeof buf);
        printf("HUSK-SMOKE-INIT: cgroup2 controllers: %s\n", buf);
    } else {
        printf("HUSK-SMOKE-INIT: cgroup2 mount FAILED\n");
    }
    FILE *fs = fopen("/proc/filesystems", "r");
    printf("HUSK-SMOKE-INIT: filesystems:");
    while (fs && fgets(buf, sizeof buf, fs)) {
        buf[strcspn(buf, "\n")] = 0;
        printf(" %s", strrchr(buf, '\t') ? strrchr(buf, '\t') + 1 : buf);
    }
    printf("\n");
    char cmdline[1024];
    cat_first_line("/proc/cmdline", cmdline, sizeof cmdline);
    printf("HUSK-SMOKE-INIT: cmdline: %s\n", cmdline);
    DIR *d = opendir("/sys/bus/virtio/devices");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/driver", e->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        link[n > 0 ? n : 0] = 0;
        printf("HUSK-SMOKE-INIT: virtio %s driver %s\n", e->d_name, n > 0 ? strrchr(link, '/') + 1 : "(none)");
    }
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    unsigned int cid = 0;
    int fd = open("/dev/vsock", O_RDONLY);
    if (fd >= 0) ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid);
    printf("HUSK-SMOKE-INIT: AF_VSOCK socket %s, local cid %u\n", s >= 0 ? "ok" : "FAILED", cid);
    if (strstr(cmdline, "initcall_debug") || strstr(cmdline, "husk_smoke_dmesg")) {
        /* with "quiet initcall_debug" the timings stay out of the (slow) console: dump them now;
         * "husk_smoke_dmesg" dumps the whole kernel log */
        static char log[1 << 20];
        int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log, sizeof log);
        for (char *l = strtok(n > 0 ? (log[n] = 0, log) : "", "\n"); l; l = strtok(NULL, "\n"))
            if (strstr(cmdline, "husk_smoke_dmesg") || (strstr(l, "initcall") && strstr(l, "returned")))
                printf("HUSK-SMOKE-DMESG: %s\n", l);
    }
    fflush(stdout);
    sync();
    reboot(RB_AUTOBOOT);
    return 0;
}
