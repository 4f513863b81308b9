#!/bin/sh
# A local registry holding busybox under the names critest pulls (there is
# no network here): Debian's docker-registry on 127.0.0.1:5000 in network
# namespace NETNS (a path), storage in DIR, images pushed by podman from a
# busybox-static root filesystem. containerd (or CRI-O) in the same
# namespace mirrors registry.k8s.io and gcr.io to it.
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
rm -rf rootfs && mkdir -p rootfs/bin rootfs/etc rootfs/proc rootfs/sys rootfs/dev rootfs/tmp rootfs/root rootfs/run
cp /bin/busybox rootfs/bin/busybox
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > rootfs/etc/passwd
printf 'root:x:0:\nwww-data:x:33:\ntest:x:50000:\nnogroup:x:65534:\n' > rootfs/etc/group
chmod 1777 rootfs/tmp
tar --numeric-owner -C rootfs -cf busybox.tar .
podman="podman --root $DIR/podman --runroot /run/conformance-podman --storage-driver overlay"
push() { # name, then --change options
    name=$1
    shift
    $podman import --quiet --change 'ENV PATH=/bin' "$@" busybox.tar "local/$name" > /dev/null
    nsenter --net="$NETNS" $podman push --quiet --tls-verify=false "local/$name" "127.0.0.1:5000/$name"
}
sleep 1
push e2e-test-images/busybox:1.29-2 --change 'CMD ["sh"]'
push pause:3.6 --change 'CMD ["/bin/sleep", "1000000000"]'
for name in test-image-latest:latest test-image-tag:test test-image-tag:all \
    test-image-1:latest test-image-2:latest test-image-3:latest; do
    push "k8s-staging-cri-tools/$name" --change "LABEL name=$name"
done
# Three tags of one image.
push k8s-staging-cri-tools/test-image-tags:1
for tag in 2 3; do
    nsenter --net="$NETNS" $podman push --quiet --tls-verify=false \
        local/k8s-staging-cri-tools/test-image-tags:1 "127.0.0.1:5000/k8s-staging-cri-tools/test-image-tags:$tag"
done
push k8s-staging-cri-tools/test-image-user-uid:latest --change 'USER 1002'
push k8s-staging-cri-tools/test-image-user-username:latest --change 'USER www-data'
push k8s-staging-cri-tools/test-image-user-uid-group:latest --change 'USER 1003:1003'
push k8s-staging-cri-tools/test-image-user-username-group:latest --change 'USER www-data:www-data'
push k8s-staging-cri-tools/test-image-predefined-group:latest --change 'USER 1000:50000'
$podman rmi --all --force > /dev/null
echo "registry: pid $(cat registry.pid)"
