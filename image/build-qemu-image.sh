#!/usr/bin/env bash
# Builds a bootable x86_64 gateway image for QEMU (board profile x86-qemu), without root
# privileges or loop devices:
#
#   image/build-qemu-image.sh [--out DIR] [--version 1.0.0] [--keyring DIR] [--push-token FILE]
#                             [--provision FILE] [--rootfs-only]
#
# From:
# - gatewayd and gateway-image, built static for x86_64-unknown-linux-musl with the `image`
#   cargo profile (release code without LTO; skipped with GATEWAYD_IMAGE_BIN=DIR holding both);
# - busybox (Debian busybox-static) as the shell and tools of the initramfs and the rootfs;
# - Debian's kernel: the package linux-image-amd64 depends on, fetched with `apt-get download`
#   (kept in target/qemu-image/cache) and unpacked with `dpkg-deb -x`;
# - GRUB for EFI (Debian grub-efi-amd64-bin, `grub-mkimage -O x86_64-efi`), booted by OVMF.
#
# Writes into DIR (default target/qemu-image/<version>):
# - gateway.img: the GPT disk (`gateway-image disk`): 1 FAT `provision` (EFI/BOOT/BOOTX64.EFI,
#   grub/grub.cfg, grub/grubenv, provision.toml), 2 and 3 rootfs slots A and B, 4 `data`;
# - rootfs.ext4: the same system as slot A, sized to fit, for `gateway-image bundle --rootfs`;
# - image.env: the paths and versions above, as shell variables.
# --rootfs-only writes rootfs.ext4 alone (the system of an update bundle).
#
# Each slot holds a whole system: /vmlinuz, /initrd.img (busybox and the modules for virtio
# disk and network, ext4, vfat and the i6300esb watchdog), and the root file system: busybox,
# /usr/bin/gatewayd, /etc/gatewayd/{gatewayd.toml,keys/,release} and /sbin/init. GRUB's
# grub.cfg (on the FAT partition, shared by both slots) chooses the slot as image/src/slots.rs
# describes and boots its kernel with root=/dev/vda2 or /dev/vda3 and gatewayd.slot=A or B.
# /sbin/init mounts the data partition at /var/lib/gatewayd and the FAT partition at /boot
# (where gatewayd finds /boot/provision.toml and the GRUB environment /boot/grub/grubenv),
# brings up eth0 as 10.0.2.15/24 (QEMU's user-mode network), runs `gatewayd provision`, then
# `gatewayd run`, starting it again whenever it exits.
#
# /etc/gatewayd/release holds VERSION=<--version>; /api/v1/status shows it as
# update.running_version. Build a second system with a higher --version and --rootfs-only and
# bundle its rootfs.ext4 with that version to update an image (image/tests/qemu-boot.sh).
#
# --keyring DIR: the public keys (*.pub) the gateway trusts for bundles; without it a
# development key is made in DIR/dev-key/ (release.key, release.pub). --push-token FILE: turns on
# the cloud's command push endpoint (`[web] push_token_file`) with that secret.
#
# Needs: cargo with the x86_64-unknown-linux-musl target and musl-gcc (musl-tools), apt-get,
# dpkg-deb, depmod (kmod), cpio, fakeroot, busybox-static, grub-efi-amd64-bin, grub-common,
# mtools, dosfstools, e2fsprogs, fdisk. Runs as any user.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# depmod, modprobe, mkfs.ext4 and sfdisk live in sbin, which a user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
VERSION=1.0.0
OUT=""
KEYRING=""
PUSH_TOKEN=""
PROVISION=""
ROOTFS_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --keyring) KEYRING="$2"; shift 2 ;;
    --push-token) PUSH_TOKEN="$2"; shift 2 ;;
    --provision) PROVISION="$2"; shift 2 ;;
    --rootfs-only) ROOTFS_ONLY=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-qemu-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$ROOT/target/qemu-image/$VERSION}"
CACHE="$ROOT/target/qemu-image/cache"
mkdir -p "$OUT" "$CACHE"
OUT="$(cd "$OUT" && pwd)"
say() { printf '== %s\n' "$*" >&2; }
abs() { (cd "$(dirname "$1")" && printf '%s/%s\n' "$(pwd)" "$(basename "$1")"); }
[ -z "$KEYRING" ] || KEYRING="$(cd "$KEYRING" && pwd)"
[ -z "$PUSH_TOKEN" ] || PUSH_TOKEN="$(abs "$PUSH_TOKEN")"
[ -z "$PROVISION" ] || PROVISION="$(abs "$PROVISION")"

# The x86-qemu profile's devices (board/profiles/x86-qemu.toml [slots]).
SLOT_A=/dev/vda2 SLOT_B=/dev/vda3 DATA=/dev/vda4 PROVISION_DEV=/dev/vda1
MODULES=(virtio_pci virtio_blk virtio_net crc32c_generic ext4 nls_cp437 nls_ascii vfat i6300esb)
BUSYBOX=/bin/busybox

# 1. The binaries.
if [ -n "${GATEWAYD_IMAGE_BIN:-}" ]; then
  BIN="$GATEWAYD_IMAGE_BIN"
else
  say "gatewayd and gateway-image (x86_64-unknown-linux-musl, profile image)"
  rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl
  (cd "$ROOT" && CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}" \
    cargo build --locked --profile image --target x86_64-unknown-linux-musl \
      -p gatewayd -p gw-image --bins)
  BIN="$ROOT/target/x86_64-unknown-linux-musl/image"
fi
for b in gatewayd gateway-image; do
  [ -x "$BIN/$b" ] || { echo "build-qemu-image.sh: $BIN/$b is missing" >&2; exit 1; }
done
[ -x "$BUSYBOX" ] && "$BUSYBOX" --list | grep -qx switch_root \
  || { echo "build-qemu-image.sh: $BUSYBOX missing: apt-get install busybox-static" >&2; exit 1; }

# 2. The kernel: the package linux-image-amd64 depends on, cached.
KPKG="$(apt-cache depends linux-image-amd64 2>/dev/null \
  | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
[ -n "$KPKG" ] || { echo "build-qemu-image.sh: apt-cache knows no linux-image-amd64" >&2; exit 1; }
DEB="$(ls "$CACHE/${KPKG}"_*.deb 2>/dev/null | head -n1 || true)"
if [ -z "$DEB" ]; then
  say "downloading $KPKG"
  (cd "$CACHE" && apt-get download "$KPKG")
  DEB="$(ls "$CACHE/${KPKG}"_*.deb | head -n1)"
fi
KDIR="$CACHE/$(basename "$DEB" .deb)"
if [ ! -f "$KDIR/.unpacked" ]; then
  say "unpacking $(basename "$DEB")"
  rm -rf "$KDIR"
  dpkg-deb -x "$DEB" "$KDIR"
  touch "$KDIR/.unpacked"
fi
KVER="$(ls "$KDIR/lib/modules" | head -n1)"
[ -f "$KDIR/lib/modules/$KVER/modules.dep" ] || depmod -b "$KDIR" "$KVER"

# 3. The initramfs, the rootfs and the disk, under fakeroot so that every file belongs to root.
WORK="$OUT/build"
rm -rf "$WORK"
mkdir -p "$WORK"
KO_LIST="$WORK/modules.insmod"
for m in "${MODULES[@]}"; do
  modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' >"$KO_LIST"

cat >"$WORK/initramfs-init" <<'EOF'
#!/bin/busybox sh
# The initramfs: loads the modules, mounts the slot named by root= read-only, switches to it.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
while read -r ko; do
  insmod "$ko" 2>/dev/null || echo "initramfs: cannot load $ko (skipped)"
done </modules.list
root=""
for word in $(cat /proc/cmdline); do
  case "$word" in root=*) root="${word#root=}" ;; esac
done
i=0
while [ ! -b "$root" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 -o ro "$root" /newroot; then
  echo "initramfs: cannot mount root=$root; rebooting in 5 s"
  sleep 5
  reboot -f
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
EOF

cat >"$WORK/rootfs-init" <<EOF
#!/bin/sh
# PID 1 of the gateway's system: mounts, network, provisioning, then gatewayd, restarted
# whenever it exits (as systemd's Restart= would). The \`reboot\` gateway command runs
# \`reboot -f\` ([commands] reboot_command).
export PATH=/usr/bin:/bin:/usr/sbin:/sbin NO_COLOR=1
mount -t proc proc /proc
grep -q '^devtmpfs /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1
mount -t ext4 -o rw,noatime $DATA /var/lib/gatewayd || echo "init: cannot mount the data partition $DATA"
mount -t vfat -o rw,noatime,flush $PROVISION_DEV /boot || echo "init: cannot mount the FAT partition $PROVISION_DEV"
hostname gateway
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
echo "init: slot \$(sed -n 's/.*gatewayd\\.slot=\\([AB]\\).*/\\1/p' /proc/cmdline), system \$(sed -n 's/^VERSION=//p' /etc/gatewayd/release)"
gatewayd provision
config=/var/lib/gatewayd/gatewayd.toml
[ -f "\$config" ] || config=/etc/gatewayd/gatewayd.toml
while :; do
  gatewayd run --config "\$config"
  echo "init: gatewayd exited (\$?); starting it again in 2 s"
  sleep 2
done
EOF

PUSH_LINE=""
[ -z "$PUSH_TOKEN" ] || PUSH_LINE='push_token_file = "/etc/gatewayd/push.token"'
cat >"$WORK/gatewayd.toml" <<EOF
# The image's base config. \`gatewayd provision\` adds provision.toml's [gateway], [cloud],
# [registry] and the technician password to it and writes /var/lib/gatewayd/gatewayd.toml.
# Without a provision.toml the gateway runs with this file and is named after the board's
# serial (QEMU: -smbios type=1,serial=...).

[gateway]
data_dir = "/var/lib/gatewayd"

[board]
profile = "x86-qemu"

[update]
keyring = "/etc/gatewayd/keys"

[web]
listen = "0.0.0.0:8080"
$PUSH_LINE

[commands]
reboot_command = ["reboot", "-f"]
EOF

if [ -z "$KEYRING" ]; then
  KEYRING="$OUT/dev-key"
  if [ ! -f "$KEYRING/release.pub" ]; then
    mkdir -p "$KEYRING"
    "$BIN/gateway-image" keygen --out "$KEYRING/release.key" >/dev/null
    say "made a development signing key $KEYRING/release.key"
  fi
fi

build_system() {
  set -euo pipefail
  # initramfs
  local ir="$WORK/initramfs"
  mkdir -p "$ir/bin" "$ir/dev" "$ir/proc" "$ir/sys" "$ir/newroot"
  cp "$BUSYBOX" "$ir/bin/busybox"
  ln -s busybox "$ir/bin/sh"
  mknod -m 600 "$ir/dev/console" c 5 1
  install -m 755 "$WORK/initramfs-init" "$ir/init"
  : >"$ir/modules.list"
  while read -r ko; do
    local rel="${ko#"$KDIR"}"
    mkdir -p "$ir$(dirname "$rel")"
    cp "$ko" "$ir$rel"
    echo "$rel" >>"$ir/modules.list"
  done <"$KO_LIST"
  (cd "$ir" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) \
    | gzip -6 >"$WORK/initrd.img"

  # rootfs
  local rfs="$WORK/rootfs"
  mkdir -p "$rfs"/{bin,sbin,usr/bin,usr/sbin,etc/gatewayd/keys,dev,proc,sys,tmp,run,boot,root}
  mkdir -p "$rfs/var/lib/gatewayd"
  chmod 1777 "$rfs/tmp"
  chmod 700 "$rfs/root"
  cp "$BUSYBOX" "$rfs/bin/busybox"
  local app
  for app in $("$BUSYBOX" --list); do
    [ "$app" = busybox ] || [ -e "$rfs/bin/$app" ] || ln -s busybox "$rfs/bin/$app"
  done
  mknod -m 600 "$rfs/dev/console" c 5 1
  install -m 755 "$WORK/rootfs-init" "$rfs/sbin/init"
  install -m 755 "$BIN/gatewayd" "$rfs/usr/bin/gatewayd"
  install -m 644 "$WORK/gatewayd.toml" "$rfs/etc/gatewayd/gatewayd.toml"
  local pub
  for pub in "$KEYRING"/*.pub; do
    install -m 644 "$pub" "$rfs/etc/gatewayd/keys/"
  done
  [ -z "$PUSH_TOKEN" ] || install -m 600 "$PUSH_TOKEN" "$rfs/etc/gatewayd/push.token"
  printf 'NAME=gatewayd\nVERSION=%s\nBOARD=x86-qemu\nKERNEL=%s\n' "$VERSION" "$KVER" \
    >"$rfs/etc/gatewayd/release"
  echo "gateway" >"$rfs/etc/hostname"
  install -m 644 "$KDIR/boot/vmlinuz-$KVER" "$rfs/vmlinuz"
  install -m 644 "$WORK/initrd.img" "$rfs/initrd.img"

  # rootfs.ext4: the system sized to fit (a quarter more than its files, and 8 MiB for the
  # journal and metadata), the image a bundle carries; the gateway downloads a bundle into its
  # data partition before installing it.
  local kib
  kib=$(du -sk --apparent-size "$rfs" | cut -f1)
  local mib=$(( (kib * 5 / 4) / 1024 + 8 ))
  rm -f "$OUT/rootfs.ext4"
  truncate -s "${mib}M" "$OUT/rootfs.ext4"
  mkfs.ext4 -q -F -L rootfs -E root_owner=0:0 -d "$rfs" "$OUT/rootfs.ext4"

  if [ "$ROOTFS_ONLY" = 0 ]; then
    local boot="$WORK/boot"
    mkdir -p "$boot/EFI/BOOT" "$boot/grub"
    grub-mkimage -O x86_64-efi -o "$boot/EFI/BOOT/BOOTX64.EFI" -p '(hd0,gpt1)/grub' \
      part_gpt fat ext2 normal linux configfile loadenv test echo gzio sleep reboot
    cat >"$boot/grub/grub.cfg" <<EOF
# The A/B boot script (image/src/slots.rs). The environment block is grub/grubenv on this
# partition (gateway-image disk writes it; gatewayd edits it as /boot/grub/grubenv):
# a slot to try (gw_try, with gw_try_left not 0) boots once, gw_try_left set to 0 on the way,
# so the next boot is gw_good again unless the running system marked the tried slot good.
set timeout=0
set gw_env=(hd0,gpt1)/grub/grubenv
load_env --file \$gw_env
set gw_slot=A
if [ "\$gw_good" = "B" ]; then set gw_slot=B; fi
if [ -n "\$gw_try" ]; then
  if [ -n "\$gw_try_left" ]; then
    if [ "\$gw_try_left" != "0" ]; then
      set gw_try_left=0
      save_env --file \$gw_env gw_try_left
      if [ "\$gw_try" = "B" ]; then set gw_slot=B; else set gw_slot=A; fi
    fi
  fi
fi
if [ "\$gw_slot" = "B" ]; then
  set gw_part=gpt3
  set gw_root=$SLOT_B
else
  set gw_part=gpt2
  set gw_root=$SLOT_A
fi
echo "gatewayd: booting slot \$gw_slot (\$gw_root)"
linux (hd0,\$gw_part)/vmlinuz root=\$gw_root ro console=ttyS0 panic=5 gatewayd.slot=\$gw_slot
initrd (hd0,\$gw_part)/initrd.img
boot
EOF
    local provision_arg=()
    [ -z "$PROVISION" ] || provision_arg=(--provision "$PROVISION")
    "$BIN/gateway-image" disk --board x86-qemu --rootfs "$rfs" --boot "$boot" \
      --version "$VERSION" "${provision_arg[@]}" \
      --provision-mib 64 --slot-mib 128 --data-mib 128 --out "$OUT/gateway.img" >&2
  fi
}

say "rootfs $VERSION (kernel $KVER)"
export ROOT OUT WORK VERSION KEYRING PUSH_TOKEN PROVISION ROOTFS_ONLY BIN BUSYBOX KDIR KVER KO_LIST
export SLOT_A SLOT_B DATA PROVISION_DEV
fakeroot -- bash -c "$(declare -f build_system); build_system"

{
  echo "VERSION=$VERSION"
  echo "KERNEL=$KVER"
  echo "ROOTFS_EXT4=$OUT/rootfs.ext4"
  echo "KEYRING=$KEYRING"
  echo "GATEWAY_IMAGE=$BIN/gateway-image"
  [ "$ROOTFS_ONLY" = 1 ] || echo "IMAGE=$OUT/gateway.img"
  [ ! -f "$KEYRING/release.key" ] || echo "DEV_KEY=$KEYRING/release.key"
} >"$OUT/image.env"
rm -rf "$WORK"
say "done: $OUT/image.env"
cat "$OUT/image.env"
