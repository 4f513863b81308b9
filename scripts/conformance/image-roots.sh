# Sourced by registry-images.sh: root filesystems standing in for the
# images critest pulls, made from what is on this machine (busybox-static,
# host binaries, Debian packages unpacked from DEBS). Each function writes
# a root into the directory it is given; nothing here is a fake of the
# program a spec checks: nginx is nginx, httpd is Apache, ipcs and pgrep
# are util-linux's and procps'.

# busybox_root DIR [PASSWD GROUP]: Debian's (dynamic) busybox with every
# applet as a hard link, as in the busybox image: masking one path (e.g.
# /bin/ls) must not mask /bin/sh, and its sh runs commands from PATH
# (busybox-static's runs its own applets first, so a masked /bin/ls would
# still run); util-linux's ipcs and procps' pgrep (applets the busybox
# image has and Debian's lacks). PASSWD and GROUP: lines added.
busybox_root() {
    root=$1
    rm -rf "$root"
    mkdir -p "$root/bin" "$root/etc" "$root/proc" "$root/sys" "$root/dev" "$root/tmp" \
        "$root/root" "$root/run" "$root/var/run"
    with_libs "$root" "$DEBS/bin/busybox" /bin/busybox
    for applet in $("$DEBS/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln "$root/bin/busybox" "$root/bin/$applet"
    done
    with_libs "$root" /usr/bin/ipcs /bin/ipcs
    with_libs "$root" /usr/bin/pgrep /bin/pgrep
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'www-data:x:33:33:www-data:/var/www:/bin/sh' \
        'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' ${2:-} > "$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'www-data:x:33:' 'nogroup:x:65534:' ${3:-} > "$root/etc/group"
    chmod 1777 "$root/tmp"
}

# with_libs ROOT FILE [DEST]: FILE as ROOT/DEST (default: the same path)
# with the shared libraries it needs (found on the host or in DEBS's
# unpacked tree) in ROOT's /lib/x86_64-linux-gnu, the loader in /lib64.
with_libs() {
    root=$1 file=$2 dest=${3:-$2}
    mkdir -p "$root$(dirname "$dest")" "$root/lib/x86_64-linux-gnu" "$root/lib64"
    rm -f "$root$dest" # never write through a hard link to busybox
    cp -L "$file" "$root$dest"
    LD_LIBRARY_PATH="$DEBS/usr/lib/x86_64-linux-gnu" ldd "$file" | while read -r name arrow path rest; do
        case "$name" in
        linux-vdso.so.*) ;;
        /lib64/*) cp -L "$name" "$root/lib64/" ;;
        *)
            [ "$arrow" = "=>" ] && [ -f "$path" ] || { echo "with_libs: $file needs $name, not found" >&2; return 1; }
            cp -L "$path" "$root/lib/x86_64-linux-gnu/$name"
            ;;
        esac
    done
}

# nginx_root DIR PORT: Debian's nginx on busybox, configured as the
# e2e nginx image is (pid file /var/run/nginx.pid, the welcome page).
nginx_root() {
    root=$1 port=$2
    busybox_root "$root"
    with_libs "$root" "$DEBS/usr/sbin/nginx" /usr/sbin/nginx
    mkdir -p "$root/etc/nginx" "$root/usr/share/nginx/html" "$root/var/lib/nginx" "$root/var/log/nginx"
    cp "$DEBS/etc/nginx/mime.types" "$root/etc/nginx/"
    cp "$DEBS/usr/share/nginx/html/index.html" "$root/usr/share/nginx/html/"
    cat > "$root/etc/nginx/nginx.conf" <<EOC
user www-data;
worker_processes 1;
pid /var/run/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
    include /etc/nginx/mime.types;
    access_log /dev/stdout;
    server {
        listen $port;
        root /usr/share/nginx/html;
        index index.html;
    }
}
EOC
}

# httpd_root DIR: Debian's Apache 2.4 on busybox, laid out as the httpd
# image (/usr/local/apache2, httpd-foreground, "It works!").
httpd_root() {
    root=$1
    busybox_root "$root"
    top=/usr/local/apache2
    with_libs "$root" "$DEBS/usr/sbin/apache2" $top/bin/httpd
    for module in mpm_event authz_core dir; do
        with_libs "$root" "$DEBS/usr/lib/apache2/modules/mod_$module.so" /usr/lib/apache2/modules/mod_$module.so
    done
    # glibc loads it for pthread_exit (Apache's threads).
    cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$root/lib/x86_64-linux-gnu/"
    mkdir -p "$root$top/htdocs" "$root$top/logs" "$root/etc/apache2"
    echo '<html><body><h1>It works!</h1></body></html>' > "$root$top/htdocs/index.html"
    # Debian's build reads /etc/apache2/apache2.conf (its HTTPD_ROOT).
    cat > "$root/etc/apache2/apache2.conf" <<EOC
ServerRoot $top
Listen 80
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so
User www-data
Group www-data
ServerName localhost
PidFile logs/httpd.pid
ErrorLog /proc/self/fd/2
DocumentRoot $top/htdocs
DirectoryIndex index.html
<Directory $top/htdocs>
    Require all granted
</Directory>
EOC
    # The full path: busybox's sh would run its own httpd applet.
    printf '%s\n' '#!/bin/sh' 'set -e' "rm -f $top/logs/httpd.pid" "exec $top/bin/httpd -DFOREGROUND \"\$@\"" \
        > "$root$top/bin/httpd-foreground"
    chmod 755 "$root$top/bin/httpd-foreground"
}

# nonewprivs_root DIR: the e2e nonewprivs image's program (prints its
# effective uid), setuid root, on busybox.
nonewprivs_root() {
    root=$1
    busybox_root "$root"
    mkdir -p "$root/usr/local/bin"
    printf '%s\n' '#include <stdio.h>' '#include <unistd.h>' \
        'int main(void) { printf("Effective uid: %d\n", geteuid()); return 0; }' > "$root/nnp.c"
    cc -static -O2 -o "$root/usr/local/bin/nnp" "$root/nnp.c"
    rm "$root/nnp.c"
    chmod 4755 "$root/usr/local/bin/nnp"
}

# pause_root DIR: a pause program (sleeps until SIGINT or SIGTERM, reaps
# children) as /pause, like the pause image's; on busybox.
pause_root() {
    root=$1
    busybox_root "$root"
    cat > "$root/pause.c" <<'EOC'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { _exit(128 + sig); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction stop = { .sa_handler = quit }, child = { .sa_handler = reap, .sa_flags = SA_NOCLDSTOP };
    sigaction(SIGINT, &stop, NULL);
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;) pause();
}
EOC
    cc -static -O2 -o "$root/pause" "$root/pause.c"
    rm "$root/pause.c"
}
