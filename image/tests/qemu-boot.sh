#!/usr/bin/env bash
# Boots the gateway image in QEMU and updates it from slot A to slot B, through the paths a
# real gateway uses:
#
# 1. builds the update's system (1.1.0, rootfs only; it makes the signing key) and the image
#    (1.0.0, trusting that key) with image/build-qemu-image.sh, under target/qemu-image/test;
# 2. writes a provision.toml with a unique gateway name onto the image
#    (`gateway-image provision`);
# 3. boots it (OVMF, GRUB, slot A) with user-mode networking forwarding a free port on
#    127.0.0.1 to the gateway's web port, and fetches /healthz and /api/v1/status: the name
#    from provision.toml, slot A, system 1.0.0;
# 4. signs a bundle of the 1.1.0 system (`gateway-image bundle`, checked with `verify`),
#    serves it over HTTP on the host (the guest reaches the host as 10.0.2.2), and sends the
#    gateway the `update` command with its URL through the cloud's command push endpoint;
#    /api/v1/status shows 1.1.0 installed in slot B;
# 5. sends the `reboot` command: GRUB tries slot B once; /api/v1/status shows slot B, system
#    1.1.0, on trial, and the same gateway name (the data partition is shared);
# 6. sends `reboot` again before B was marked good (that takes [update] healthy_after): the
#    boot loader falls back to slot A, system 1.0.0, and the gateway reports the failed try.
#
# QEMU runs with -machine q35,accel=tcg: on these machines KVM guests hang silently although
# /dev/kvm opens. GATEWAYD_QEMU_ACCEL=kvm uses KVM instead (shorter timeouts). Each boot may take
# GATEWAYD_QEMU_BOOT_TIMEOUT seconds (default 120 with TCG, 60 with KVM). Every wait is bounded;
# QEMU and the HTTP server are stopped on exit, whatever happens. The guest's console is kept
# in target/qemu-image/test/console.log. GATEWAYD_QEMU_SKIP_BUILD=1 reuses the last build.
#
# Needs: qemu-system-x86, ovmf, curl, python3, and what image/build-qemu-image.sh needs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$ROOT/target/qemu-image/test"
ACCEL="${GATEWAYD_QEMU_ACCEL:-tcg}"
case "$ACCEL" in
  tcg) BOOT_TIMEOUT="${GATEWAYD_QEMU_BOOT_TIMEOUT:-120}"; CPU=max ;;
  kvm) BOOT_TIMEOUT="${GATEWAYD_QEMU_BOOT_TIMEOUT:-60}"; CPU=host ;;
  *) echo "GATEWAYD_QEMU_ACCEL: tcg or kvm" >&2; exit 2 ;;
esac
OVMF=/usr/share/ovmf/OVMF.fd
APP=qemu-test
NAME="qemu-gw-$(date +%s)-$$"

T_START=$(date +%s)
say() { printf '\n== [%4ss] %s\n' "$(( $(date +%s) - T_START ))" "$*"; }
fail() {
  echo "FAIL: $*" >&2
  if [ -f "$WORK/console.log" ]; then
    echo "--- last lines of the guest console ($WORK/console.log):" >&2
    tail -n 40 "$WORK/console.log" >&2
  fi
  exit 1
}

QEMU_PID=""
HTTP_PID=""
cleanup() {
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$QEMU_PID" 2>/dev/null || true
  fi
  if [ -n "$HTTP_PID" ]; then kill "$HTTP_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

for tool in qemu-system-x86_64 curl python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[ -f "$OVMF" ] || fail "$OVMF is missing: apt-get install ovmf"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- 1. build
if [ "${GATEWAYD_QEMU_SKIP_BUILD:-}" = 1 ] && [ -f "$WORK/v1.0.0/image.env" ]; then
  say "reusing the last build ($WORK)"
else
  rm -rf "$WORK"
  mkdir -p "$WORK"
  head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$WORK/push.token"
  say "building the update's system 1.1.0"
  "$ROOT/image/build-qemu-image.sh" --version 1.1.0 --rootfs-only --out "$WORK/v1.1.0" \
    --push-token "$WORK/push.token" >/dev/null
  say "building the image 1.0.0"
  "$ROOT/image/build-qemu-image.sh" --version 1.0.0 --out "$WORK/v1.0.0" \
    --keyring "$WORK/v1.1.0/dev-key" --push-token "$WORK/push.token" >/dev/null
fi
T_BUILT=$(date +%s)
# shellcheck disable=SC1091
. "$WORK/v1.0.0/image.env"
KEY="$WORK/v1.1.0/dev-key/release.key"
PUSH_TOKEN="$(cat "$WORK/push.token")"
DISK="$WORK/disk.img"
cp --sparse=always "$IMAGE" "$DISK"
rm -f "$WORK/console.log"

# --- 2. provision
cat >"$WORK/provision.toml" <<EOF
[gateway]
name = "$NAME"
application = "$APP"

[technician]
password = "qemu-test-technician"
api_token = "qemu-test-api-token-0123"
EOF
API=(-H "Authorization: Bearer qemu-test-api-token-0123")
"$GATEWAY_IMAGE" provision "$DISK" --file "$WORK/provision.toml"

# --- 3. boot
PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
say "booting $DISK (accel=$ACCEL, web on $BASE)"
qemu-system-x86_64 -machine "q35,accel=$ACCEL" -cpu "$CPU" -m 512 -smp 1 \
  -nodefaults -no-user-config -display none -vga none \
  -bios "$OVMF" \
  -drive "file=$DISK,format=raw,if=virtio" \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:8080" \
  -device virtio-net-pci,netdev=n0,romfile= \
  -device i6300esb -smbios type=1,serial=qemu-test \
  -chardev "file,id=console,path=$WORK/console.log" -serial chardev:console &
QEMU_PID=$!
T_QEMU=$(date +%s)

BOOTS=()
# Waits until /api/v1/status answers with update.booted = $1 (and, so that an answer of the
# system before a reboot is not taken, after the console showed one more boot than before).
# The boot's time counts from $3 (default now): QEMU's start, or the reboot command.
wait_booted() {
  local slot="$1" boots_before="$2" t0="${3:-$(date +%s)}" now
  while :; do
    now=$(date +%s)
    [ $((now - t0)) -lt "$BOOT_TIMEOUT" ] || fail "no answer from slot $slot within ${BOOT_TIMEOUT}s"
    kill -0 "$QEMU_PID" 2>/dev/null || fail "qemu exited"
    local boots
    boots=$(grep -c "init: slot" "$WORK/console.log" 2>/dev/null || true)
    if [ "${boots:-0}" -gt "$boots_before" ] \
      && curl -sf --max-time 5 "$BASE/healthz" >/dev/null 2>&1 \
      && curl -sf --max-time 5 "${API[@]}" "$BASE/api/v1/status" >"$WORK/status.json" 2>/dev/null \
      && [ "$(json update.booted <"$WORK/status.json")" = "$slot" ]; then
      BOOTS+=("$((now - t0))")
      say "slot $slot answers $((now - t0)) s after the start or the reboot command"
      return 0
    fi
    sleep 1
  done
}
json() {
  python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$1"
}
expect() {
  local key="$1" want="$2" got
  got="$(json "$key" <"$WORK/status.json")"
  [ "$got" = "$want" ] || fail "/api/v1/status $key is '$got', expected '$want'"
  echo "   $key = $got"
}
expect_contains() {
  local key="$1" want="$2" got
  got="$(json "$key" <"$WORK/status.json")"
  case "$got" in *"$want"*) echo "   $key = $got" ;; *) fail "/api/v1/status $key is '$got', expected '$want' in it" ;; esac
}
# Sends a gateway command through the cloud's push endpoint; prints the HTTP status.
push() {
  local command="$1" payload="$2" max="$3"
  local body
  body=$(python3 -c 'import base64, json, sys
print(json.dumps({"application": sys.argv[1], "device": sys.argv[2], "command": sys.argv[3],
                  "payload": base64.b64encode(sys.argv[4].encode()).decode()}))' \
    "$APP" "$NAME" "$command" "$payload")
  curl -s -o "$WORK/push.out" -w '%{http_code}' --max-time "$max" \
    -H "Authorization: Bearer $PUSH_TOKEN" -H 'Content-Type: application/json' \
    --data "$body" "$BASE/api/commands/v1/push" || true
}
boots_so_far() { grep -c "init: slot" "$WORK/console.log" 2>/dev/null || true; }

wait_booted A 0 "$T_QEMU"
curl -sf --max-time 5 "$BASE/healthz" | grep -qx ok || fail "/healthz did not answer ok"
echo "   /healthz = ok"
expect gateway.name "$NAME"
expect gateway.application "$APP"
expect update.booted A
expect update.running_version 1.0.0
expect update.version_a 1.0.0

# --- 4. update through the push endpoint
say "bundle 1.1.0, served on the host"
mkdir -p "$WORK/serve"
"$GATEWAY_IMAGE" bundle --rootfs "$WORK/v1.1.0/rootfs.ext4" --compatible gatewayd-x86-qemu \
  --version 1.1.0 --description "QEMU test update" --key "$KEY" \
  --out "$WORK/serve/gatewayd-1.1.0.bundle"
"$GATEWAY_IMAGE" verify "$WORK/serve/gatewayd-1.1.0.bundle" --keyring "$WORK/v1.1.0/dev-key"
HTTP_PORT="$(free_port)"
python3 -m http.server --bind 127.0.0.1 --directory "$WORK/serve" "$HTTP_PORT" \
  >"$WORK/http.log" 2>&1 &
HTTP_PID=$!
for _ in $(seq 50); do
  curl -sf --max-time 2 -o /dev/null -r 0-0 "http://127.0.0.1:$HTTP_PORT/gatewayd-1.1.0.bundle" && break
  sleep 0.2
done
say "update command: http://10.0.2.2:$HTTP_PORT/gatewayd-1.1.0.bundle"
T0=$(date +%s)
code=$(push update "http://10.0.2.2:$HTTP_PORT/gatewayd-1.1.0.bundle" 600)
[ "$code" = 200 ] || fail "update command answered $code: $(cat "$WORK/push.out")"
T_INSTALL=$(( $(date +%s) - T0 ))
say "installed in $T_INSTALL s"
curl -sf --max-time 5 "${API[@]}" "$BASE/api/v1/status" >"$WORK/status.json"
expect update.version_b 1.1.0
expect update.last_install.outcome installed
expect_contains update.state "B is installed and is tried at the next boot"

# --- 5. reboot into B
say "reboot command: slot B is tried"
before=$(boots_so_far)
T0=$(date +%s)
code=$(push reboot "" 5)
echo "   reboot answered ${code} (000: the VM reset before it answered)"
wait_booted B "$before" "$T0"
expect gateway.name "$NAME"
expect update.booted B
expect update.running_version 1.1.0
expect_contains update.state "booted B on trial"

# --- 6. reboot again before B is marked good: back to A
say "reboot command before B was marked good: fall back to A"
before=$(boots_so_far)
T0=$(date +%s)
code=$(push reboot "" 5)
echo "   reboot answered ${code} (000: the VM reset before it answered)"
wait_booted A "$before" "$T0"
expect gateway.name "$NAME"
expect update.running_version 1.0.0
expect_contains update.state "slot B was tried and never marked good"

T_END=$(date +%s)
say "PASS: boots ${BOOTS[*]} s (accel=$ACCEL), install $T_INSTALL s, build $((T_BUILT - T_START)) s, whole test $((T_END - T_START)) s"
