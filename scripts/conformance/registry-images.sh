#!/bin/sh
# A local registry holding the images critest pulls (there is no network
# here): Debian's docker-registry on 127.0.0.1:5000 in network namespace
# NETNS (a path), storage in DIR, images pushed by podman from root
# filesystems made of busybox-static and, for the servers, Debian's nginx
# and Apache (image-roots.sh). containerd (or CRI-O) in the same namespace
# mirrors registry.k8s.io and gcr.io to it.
set -eu
: "${NETNS:?network namespace path}" "${DIR:?work dir}"
mkdir -p "$DIR"
cd "$DIR"
cat > registry.yml <<EOC
version: 0.1
storage:
  filesystem:
    rootdirectory: $DIR/registry
http:
  addr: 127.0.0.1:5000
EOC
nsenter --net="$NETNS" docker-registry serve registry.yml > registry.log 2>&1 &
echo $! > registry.pid
# Debian packages unpacked (not installed: nothing starts on the host).
DEBS=$DIR/debs/root
if [ ! -x "$DEBS/bin/busybox" ]; then
    mkdir -p "$DIR/debs" && (cd "$DIR/debs" && apt-get download busybox nginx nginx-common apache2-bin libapr1 libaprutil1)
    for deb in "$DIR"/debs/*.deb; do dpkg -x "$deb" "$DEBS"; done
fi
. "$(dirname "$(readlink -f "$0")")/image-roots.sh"
tarball() { # name, root
    tar --numeric-owner -C "$2" -cf "$1.tar" .
    rm -rf "$2"
}
busybox_root rootfs && tarball busybox rootfs
pause_root rootfs && tarball pause rootfs
busybox_root rootfs 'default-user:x:1000:1000:default-user:/home/default-user:/bin/sh' \
    'default-user:x:1000: group-defined-in-image:x:50000:default-user' && tarball predefined-group rootfs
nginx_root rootfs 80 && tarball nginx rootfs
nginx_root rootfs 12003 && tarball hostnet-nginx rootfs
httpd_root rootfs && tarball httpd rootfs
nonewprivs_root rootfs && tarball nonewprivs rootfs
PATH_IN_IMAGES=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
podman="podman --root $DIR/podman --runroot /run/conformance-podman --storage-driver overlay"
push() { # name, tarball, then --change options
    name=$1 tarball=$2
    shift 2
    $podman import --quiet --change "ENV PATH=$PATH_IN_IMAGES" "$@" "$tarball.tar" "local/$name" > /dev/null
    nsenter --net="$NETNS" $podman push --quiet --tls-verify=false "local/$name" "127.0.0.1:5000/$name"
}
sleep 1
push e2e-test-images/busybox:1.29-2 busybox --change 'CMD ["sh"]'
push pause:3.6 pause --change 'ENTRYPOINT ["/pause"]'
for name in test-image-latest:latest test-image-tag:test test-image-tag:all \
    test-image-1:latest test-image-2:latest test-image-3:latest; do
    push "k8s-staging-cri-tools/$name" busybox --change "LABEL name=$name"
done
# Three tags of one image.
push k8s-staging-cri-tools/test-image-tags:1 busybox
for tag in 2 3; do
    nsenter --net="$NETNS" $podman push --quiet --tls-verify=false \
        local/k8s-staging-cri-tools/test-image-tags:1 "127.0.0.1:5000/k8s-staging-cri-tools/test-image-tags:$tag"
done
push k8s-staging-cri-tools/test-image-user-uid:latest busybox --change 'USER 1002'
push k8s-staging-cri-tools/test-image-user-username:latest busybox --change 'USER www-data'
push k8s-staging-cri-tools/test-image-user-uid-group:latest busybox --change 'USER 1003:1003'
push k8s-staging-cri-tools/test-image-user-username-group:latest busybox --change 'USER www-data:www-data'
push k8s-staging-cri-tools/test-image-predefined-group:latest predefined-group --change 'USER 1000'
# The e2e images critest runs servers from, rebuilt (see image-roots.sh).
push e2e-test-images/nginx:1.14-2 nginx --change 'CMD ["nginx", "-g", "daemon off;"]'
push k8s-staging-cri-tools/hostnet-nginx-amd64 hostnet-nginx --change 'CMD ["nginx", "-g", "daemon off;"]'
push e2e-test-images/httpd:2.4.39-4 httpd --change 'CMD ["httpd-foreground"]'
push e2e-test-images/nonewprivs:1.3 nonewprivs --change 'USER 1000' --change 'CMD ["/usr/local/bin/nnp"]'
$podman rmi --all --force > /dev/null
echo "registry: pid $(cat registry.pid)"
