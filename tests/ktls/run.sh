#!/usr/bin/env bash
# Boot Debian's own kernel (linux-image-amd64, 6.1: it ships tls.ko) under QEMU with
# software emulation, from an initramfs holding the test programs, and run kTLS tests in
# it. This machine's kernel has no kTLS (TCP_ULP "tls" fails with ENOENT), so the VM is
# where kernel TLS offload is exercised. See docs/adr/0011-ktls-test-vm.md.
#
#   tests/ktls/run.sh --selftest build/gcc/ktls_selftest      (what `make test-ktls` runs)
#   tests/ktls/run.sh [options] -- COMMAND LINE               (anything else, e.g. the relay)
#
# Options:
#   --selftest BIN   copy BIN into the VM as /bin/ktls_selftest and run it there when no
#                    COMMAND is given; it is also run on this host first (expected here:
#                    exit 77, "no kTLS"), so the log shows what a kernel without kTLS says
#   --bin PATH       copy PATH into the VM's /bin with every shared library ldd lists for
#                    it (repeatable); a --bin that is a directory copies its files
#   --file SRC:DST   copy SRC into the initramfs at DST (certificates, configuration)
#   --timeout SEC    hard limit for the VM, boot to power-off (default 120)
#   --mem SIZE       guest memory (default 512M)
#   --cpu MODEL      QEMU's -cpu (e.g. max: the host's AES instructions too, so TLS 1.3
#                    picks AES-GCM rather than ChaCha20-Poly1305); default QEMU's own
#   --kernel-suite S boot the newest kernel of Debian suite S instead (e.g. trixie-backports:
#                    a kernel with kTLS rekey), fetched and signature-checked from
#                    deb.debian.org (KTLS_MIRROR overrides), cached in build/ktls/kernel
#   KTLS_MODULES     (environment) the modules to load, before their dependencies are
#                    added (default: the AES-GCM and ChaCha20-Poly1305 set, then tls)
#   -- COMMAND...    run COMMAND (joined with spaces, run by busybox sh in the VM with
#                    PATH=/bin, cwd /tmp) instead of the self-test; its exit status is the
#                    result. `unprivileged PROG ARGS` runs PROG as nobody (the relay
#                    refuses root). The relay and loadgen over ws:// (works today, 10 s):
#       tests/ktls/run.sh --bin build/gcc/pyrycode-relay --bin build/gcc/loadgen -- \
#         'unprivileged pyrycode-relay --insecure-listen 127.0.0.1:8080 --metrics-listen= \
#            --rate-limit-burst 0 2>/tmp/relay.log & sleep 2 &&
#          unprivileged loadgen --url ws://127.0.0.1:8080 --duration 1 --quiet'
#                    and over wss:// once the relay speaks TLS (issue #12): add
#         --file cert.pem:/etc/relay/cert.pem --file key.pem:/etc/relay/key.pem, start it
#         with --https-listen 127.0.0.1:8443 --tls-cert ... --tls-key ..., point loadgen
#         at wss://127.0.0.1:8443 --ca /etc/relay/cert.pem, and check its kTLS metric
#         and /proc/net/tls_stat (printed after every run) in the same command.
#
# In the VM, /init mounts proc, sys and devtmpfs, brings up lo (the only interface:
# -nic none), insmods tls.ko and the AES-GCM / ChaCha20-Poly1305 modules in dependency
# order, runs the command, prints its output, /proc/net/tls_stat and a result line, and
# powers off. This script reads the result line from the serial console.
#
# Exit status: 0 passed, 1 failed (or the VM timed out or crashed), 77 skipped: Debian's
# kernel package could not be fetched and none is cached. Everything it makes lives in
# build/ktls/ (the extracted kernel is cached there per version; a warm run downloads
# nothing). Installs qemu-system-x86, busybox-static and cpio with apt when missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/build/ktls"
EXIT_SKIP=77

selftest=""
bins=()
files=()
timeout_s=120
mem=512M
kernel_suite=""
cpu_model=""
cmd=()
while (($#)); do
  case $1 in
    --selftest) selftest=$2; shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    --file) files+=("$2"); shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --kernel-suite) kernel_suite=$2; shift 2 ;;
    --cpu) cpu_model=$2; shift 2 ;;
    --) shift; cmd=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "ktls: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z $selftest && ${#cmd[@]} -eq 0 ]]; then
  echo "ktls: nothing to run: give --selftest BIN or -- COMMAND" >&2
  exit 2
fi

t0=${EPOCHREALTIME/./}
elapsed() { local d=$(( ${EPOCHREALTIME/./} - t0 )); printf '%d.%d' $((d / 1000000)) $((d / 100000 % 10)); }
log() { echo "ktls: [$(elapsed) s] $*" >&2; }
mkdir -p "$out"

# --- host tools --------------------------------------------------------------------------
want=(qemu-system-x86 busybox-static cpio)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing Debian packages: ${missing[*]}; fix: sudo apt-get install ${missing[*]}"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the kernel: the exact version linux-image-amd64 names, cached in build/ktls ---------
exec 9>"$out/.lock"
flock 9 # one download/extraction at a time; concurrent runs then share the cache

candidate() { # prints "PKG VERSION" of the image linux-image-amd64's candidate depends on
  local ver dep
  ver=$(apt-cache policy linux-image-amd64 2>/dev/null | awk '/Candidate:/ {print $2}')
  [[ -n $ver && $ver != "(none)" ]] || return 1
  dep=$(apt-cache show "linux-image-amd64=$ver" 2>/dev/null |
        awk -F': ' '/^Depends:/ {print $2; exit}' | tr ',' '\n' |
        grep -oE 'linux-image-6\.1[^ ]*-amd64' | head -n1) || true
  [[ -n $dep ]] || return 1
  echo "$dep $ver"
}

fetch_kernel() { # $1 pkg, $2 version, $3 destination directory
  local dl="$out/dl"
  rm -rf "$dl"; mkdir -p "$dl"
  id _apt >/dev/null 2>&1 && chown _apt "$dl" # apt's sandbox user writes the .deb
  (cd "$dl" && apt-get download -q=2 "$1=$2") || { rm -rf "$dl"; return 1; }
  local deb tmp="$3.tmp"
  deb=$(ls "$dl"/*.deb)
  log "extracting $(basename "$deb") ($(du -h "$deb" | cut -f1))"
  rm -rf "$tmp"; mkdir -p "$tmp"
  dpkg-deb -x "$deb" "$tmp"
  # Keep what the VM needs: the kernel, its config, the module index and the modules
  # under crypto, lib and net (drivers, sound and file systems are most of the size).
  find "$tmp"/lib/modules/*/kernel -mindepth 1 -maxdepth 1 \
       ! -name crypto ! -name lib ! -name net ! -name arch -exec rm -rf {} +
  rm -rf "$3" && mv "$tmp" "$3"
  rm -rf "$dl"
}

# --kernel-suite SUITE: the newest linux-image-*-amd64 of another Debian suite (e.g.
# trixie-backports, for a kernel with kTLS rekey, 6.14+), fetched from deb.debian.org and
# verified the way apt does: InRelease signed by Debian's archive keyring, the Packages
# index by its SHA256 there, the .deb by its SHA256 in the index.
MIRROR=${KTLS_MIRROR:-http://deb.debian.org/debian}
fetch_suite_kernel() { # $1 suite; prints the kernel directory
  local suite=$1 d="$out/suite/$1" pkgline deb sha name ver
  mkdir -p "$d"
  curl -fsS --max-time 60 -o "$d/InRelease" "$MIRROR/dists/$suite/InRelease" || return 1
  gpgv --keyring /usr/share/keyrings/debian-archive-keyring.gpg --output "$d/Release" "$d/InRelease" 2>/dev/null ||
    { log "InRelease of $suite: bad signature"; return 1; }
  curl -fsS --max-time 120 -o "$d/Packages.xz" "$MIRROR/dists/$suite/main/binary-amd64/Packages.xz" || return 1
  sha=$(awk '/^SHA256:/ {f=1; next} /^[^ ]/ {f=0} f && $3 == "main/binary-amd64/Packages.xz" {print $1}' "$d/Release")
  [[ -n $sha && $(sha256sum "$d/Packages.xz" | cut -d' ' -f1) == "$sha" ]] ||
    { log "Packages.xz of $suite does not match its Release"; return 1; }
  # the newest generic image (not -cloud, -rt, -dbg) K = linux-image-<release>; the
  # files are in K itself, or (newer packaging) in linux-binary-<release> (vmlinuz) and
  # linux-modules-<release> (linux-base-<release>: modules.builtin), or in K-unsigned:
  # every one of those present is extracted
  local idx="$d/index" rel
  xz -dc "$d/Packages.xz" | awk '
    /^Package: / {p=$2; v=""; f=""; s=""} /^Version: / {v=$2} /^Filename: / {f=$2} /^SHA256: / {s=$2}
    /^$/ && f != "" {print p, v, f, s}' >"$idx"
  read -r name ver _ <<<"$(awk '$1 ~ /^linux-image-[0-9][^ ]*-amd64$/ && $1 !~ /(cloud|rt)-amd64$/' "$idx" |
                           sort -k2,2V | tail -n1)"
  [[ -n ${name:-} ]] || { log "no linux-image in $suite"; return 1; }
  rel=${name#linux-image-}
  local kd="$out/kernel/${name}_$ver"
  if [[ ! -f $kd/.complete ]]; then
    rm -rf "$kd.tmp"; mkdir -p "$kd.tmp"
    local pkg got=0
    for pkg in "$name" "linux-base-$rel" "linux-binary-$rel" "linux-modules-$rel" "$name-unsigned"; do
      read -r _ _ deb sha <<<"$(awk -v p="$pkg" -v v="$ver" '$1 == p && $2 == v' "$idx" | head -n1)"
      [[ -n ${deb:-} ]] || continue
      log "kernel $pkg $ver from $suite: downloading"
      curl -fsS --max-time 600 -o "$d/k.deb" "$MIRROR/$deb" || return 1
      [[ $(sha256sum "$d/k.deb" | cut -d' ' -f1) == "$sha" ]] || { log "$deb does not match its index"; return 1; }
      dpkg-deb -x "$d/k.deb" "$kd.tmp"
      rm -f "$d/k.deb"; got=$((got + 1)); deb=""
    done
    if [[ -d $kd.tmp/usr/lib/modules ]]; then # merged-/usr packages: one tree
      mkdir -p "$kd.tmp/lib/modules"; cp -a "$kd.tmp/usr/lib/modules/." "$kd.tmp/lib/modules/"
      rm -rf "$kd.tmp/usr/lib/modules"
    fi
    if [[ ! -d $kd.tmp/usr/boot && ! -d $kd.tmp/boot ]]; then
      local vm; vm=$(find "$kd.tmp" -name 'vmlinuz*' | head -n1)
      [[ -n $vm ]] && mkdir -p "$kd.tmp/boot" && mv "$vm" "$kd.tmp/boot/"
    fi
    [[ -f $kd.tmp/boot/vmlinuz ]] && mv "$kd.tmp/boot/vmlinuz" "$kd.tmp/boot/vmlinuz-$rel"
    ls "$kd.tmp"/boot/vmlinuz-* >/dev/null 2>&1 && ls -d "$kd.tmp"/lib/modules/* >/dev/null 2>&1 ||
      { log "$name $ver: no kernel or modules among its packages"; return 1; }
    find "$kd.tmp"/lib/modules/*/kernel -mindepth 1 -maxdepth 1 \
         ! -name crypto ! -name lib ! -name net ! -name arch -exec rm -rf {} +
    rm -rf "$kd" && mv "$kd.tmp" "$kd" && touch "$kd/.complete"
  else
    log "kernel $name $ver from $suite (cached)"
  fi
  echo "$kd"
}

kdir=""
if [[ -n $kernel_suite ]]; then
  kdir=$(fetch_suite_kernel "$kernel_suite") || kdir=""
  if [[ -z $kdir ]]; then
    log "SKIP: no kernel could be fetched from $kernel_suite"
    exit $EXIT_SKIP
  fi
elif pv=$(candidate) || { log "apt lists have no linux-image-amd64 candidate; apt-get update";
                        apt-get update -qq >/dev/null 2>&1 && pv=$(candidate); }; then
  read -r kpkg kver <<<"$pv"
  kdir="$out/kernel/${kpkg}_$kver"
  if [[ -f $kdir/.complete ]]; then
    log "kernel $kpkg $kver (cached)"
  else
    log "kernel $kpkg $kver: apt-get download"
    if fetch_kernel "$kpkg" "$kver" "$kdir" ||
       { log "download failed; apt-get update and retry";
         apt-get update -qq >/dev/null 2>&1 && fetch_kernel "$kpkg" "$kver" "$kdir"; }; then
      touch "$kdir/.complete"
    else
      kdir=""
    fi
  fi
fi
if [[ -z $kdir ]]; then # offline, or the archive moved on: an older cached kernel will do
  kdir=$(ls -d "$out"/kernel/*/.complete 2>/dev/null | sort -V | tail -n1 || true)
  kdir=${kdir%/.complete}
  if [[ -z $kdir ]]; then
    log "SKIP: Debian's linux-image-amd64 (6.1) could not be fetched and none is cached in $out/kernel"
    exit $EXIT_SKIP
  fi
  log "using the cached kernel $(basename "$kdir") (the current one could not be fetched)"
fi
flock -u 9

vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -n1)
kmods=$(ls -d "$kdir"/lib/modules/* | head -n1)
krel=$(basename "$kmods")

# --- modules: tls and the AEADs it asks the crypto API for, in dependency order ----------
# tls.ko allocates "gcm(aes)" and "rfc7539(chacha20,poly1305)"; those templates and
# algorithms are separate modules (AES itself is built in), which the kernel would
# otherwise request from a modprobe the initramfs does not have. The package ships no
# modules.dep (depmod makes it at install time), so symbol dependencies are read from
# each module's own .modinfo "depends=" entry: what `modinfo -F depends` prints.
read -ra want_mods <<<"${KTLS_MODULES:-gf128mul ghash_generic ctr gcm chacha_generic chacha \
poly1305_generic chacha20poly1305 tls}"
declare -A path_of builtin seen
while IFS= read -r f; do
  n=${f##*/}; n=${n%%.ko*}; path_of[${n//-/_}]=$f
done < <(find "$kmods/kernel" -name '*.ko*')
while IFS= read -r b; do
  n=${b##*/}; n=${n%%.ko*}; builtin[${n//-/_}]=1
done <"$kmods/modules.builtin"
modinfo_depends() { # the .modinfo section is NUL-separated key=value strings
  local f=$1
  case $f in
    *.ko) tr '\0' '\n' <"$f" ;;
    *.ko.xz) xz -dc "$f" | tr '\0' '\n' ;;
    *.ko.zst) zstd -qdc "$f" | tr '\0' '\n' ;;
  esac | grep -a -m1 '^depends=' | cut -d= -f2 | tr ',' ' '
}
order=()
visit() {
  local m=${1//-/_} d
  [[ -n ${seen[$m]:-} || -n ${builtin[$m]:-} ]] && return 0
  [[ -n ${path_of[$m]:-} ]] || { log "module $m is neither built in nor in $kmods/kernel"; exit 1; }
  seen[$m]=1
  for d in $(modinfo_depends "${path_of[$m]}"); do visit "$d"; done
  order+=("$m")
}
for m in "${want_mods[@]}"; do
  # a newer kernel may build a wanted module in, or fold it into another (chacha_generic
  # and poly1305_generic became library code): skip it; a missing dependency still fails
  if [[ -z ${path_of[${m//-/_}]:-} && -z ${builtin[${m//-/_}]:-} ]]; then
    log "module $m: not in this kernel, skipped"; continue
  fi
  visit "$m"
done

# --- initramfs -----------------------------------------------------------------------------
work=$(mktemp -d "$out/run.XXXXXX")
trap 'rm -rf "$work"' EXIT
ir="$work/root"
mkdir -p "$ir"/{bin,dev,proc,sys,tmp,etc/ktls,lib/modules/ktls}
cp /bin/busybox "$ir/bin/busybox"
ln -s busybox "$ir/bin/sh" # /init installs the other applets' links itself
if [[ $(id -u) -eq 0 ]]; then mknod -m 600 "$ir/dev/console" c 5 1; fi

for m in "${order[@]}"; do
  src=${path_of[$m]}
  case $src in
    *.ko) cp "$src" "$ir/lib/modules/ktls/$m.ko" ;;
    *.ko.xz) xz -dc "$src" >"$ir/lib/modules/ktls/$m.ko" ;;
    *.ko.zst) zstd -qdc "$src" >"$ir/lib/modules/ktls/$m.ko" ;;
    *.ko.gz) gzip -dc "$src" >"$ir/lib/modules/ktls/$m.ko" ;;
    *) log "unknown module format: $src"; exit 1 ;;
  esac
  echo "$m" >>"$ir/etc/ktls/modules"
done

add_bin() { # $1 host path, $2 name in the VM's /bin; plus its shared libraries
  cp -L "$1" "$ir/bin/$2"
  local lib
  for lib in $(ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$ir$(dirname "$lib")"
    [[ -e $ir$lib ]] || cp -L "$lib" "$ir$lib"
  done
}
if [[ -n $selftest ]]; then
  [[ -x $selftest ]] || { log "no self-test binary at $selftest (make test-ktls builds it)"; exit 1; }
  add_bin "$selftest" ktls_selftest
fi
for b in "${bins[@]}"; do
  if [[ -d $b ]]; then for f in "$b"/*; do [[ -f $f && -x $f ]] && add_bin "$f" "$(basename "$f")"; done
  else add_bin "$b" "$(basename "$b")"; fi
done
for f in "${files[@]}"; do
  src=${f%%:*}; dst=${f#*:}
  mkdir -p "$ir$(dirname "$dst")"; cp -L "$src" "$ir$dst"
done

if ((${#cmd[@]})); then
  printf '%s\n' "${cmd[*]}" >"$ir/etc/ktls/test.sh"
else
  echo "ktls_selftest" >"$ir/etc/ktls/test.sh"
fi

# An unprivileged user for programs that refuse root (the relay does):
# `unprivileged PROG ARGS` runs PROG as nobody, with no capabilities.
printf 'root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/tmp:/bin/sh\n' >"$ir/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ir/etc/group"
cat >"$ir/bin/unprivileged" <<'EOF'
#!/bin/sh
exec su -s /bin/sh -c 'exec "$0" "$@"' -- nobody "$@"
EOF
chmod 755 "$ir/bin/unprivileged"

cat >"$ir/init" <<'EOF'
#!/bin/sh
# PID 1 of the kTLS test VM (written by tests/ktls/run.sh).
export PATH=/bin HOME=/tmp
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
ip link set lo up
result() {
  echo "KTLS-VM-TLS-STAT-BEGIN"
  cat /proc/net/tls_stat 2>&1
  echo "KTLS-VM-TLS-STAT-END"
  echo "KTLS-VM-UPTIME $(cut -d' ' -f1 /proc/uptime)"
  echo "KTLS-VM-RESULT: $1"
  sync
  poweroff -f
}
echo "KTLS-VM: kernel $(uname -r); loading: $(echo $(cat /etc/ktls/modules))"
for m in $(cat /etc/ktls/modules); do
  insmod /lib/modules/ktls/$m.ko || result "fail (insmod $m)"
done
echo "KTLS-VM-BEGIN $(cat /etc/ktls/test.sh | head -n1)"
cd /tmp
sh /etc/ktls/test.sh
rc=$?
echo "KTLS-VM-END rc=$rc"
if [ $rc -eq 0 ]; then result pass; else dmesg | tail -n 20; result "fail rc=$rc"; fi
EOF
chmod 755 "$ir/init"
(cd "$ir" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$work/initramfs.gz"
log "initramfs: $(du -h "$work/initramfs.gz" | cut -f1), modules: ${order[*]}"

# --- on this host first: what a kernel without kTLS says ------------------------------------
host_rc=0
if [[ -n $selftest ]]; then
  log "self-test on this host ($(uname -r)):"
  set +e
  "$selftest" 2>&1 | sed 's/^/  host| /'
  host_rc=${PIPESTATUS[0]}
  set -e
  case $host_rc in
    77) log "host: no kTLS here (exit 77), as expected on a kernel without the tls module" ;;
    0) log "host: this kernel has kTLS and the self-test passed on it too" ;;
    *) log "host: the self-test FAILED on this kernel (exit $host_rc)" ;;
  esac
fi

# --- boot ----------------------------------------------------------------------------------
console="$out/console.log"
log "booting $(basename "$vmlinuz") under qemu-system-x86_64 -accel tcg (limit ${timeout_s} s)"
t_boot=${EPOCHREALTIME/./}
set +e
timeout -k 5 "$timeout_s" qemu-system-x86_64 -accel tcg ${cpu_model:+-cpu "$cpu_model"} -m "$mem" -smp 1 -nographic \
  -no-reboot -nic none -kernel "$vmlinuz" -initrd "$work/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1 rdinit=/init" </dev/null 2>&1 |
  tr -d '\r' | sed -u 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' | tee "$console" | sed 's/^/  vm| /'
qemu_rc=${PIPESTATUS[0]}
set -e
t_vm=$(( (${EPOCHREALTIME/./} - t_boot) / 100000 ))
t_vm="$((t_vm / 10)).$((t_vm % 10))"

echo "ktls: /proc/net/tls_stat in the VM after the run:"
sed -n '/^KTLS-VM-TLS-STAT-BEGIN/,/^KTLS-VM-TLS-STAT-END/p' "$console" | sed '1d;$d; s/^/    /'
uptime=$(awk '/^KTLS-VM-UPTIME/ {print $2}' "$console")
res=$(grep -a '^KTLS-VM-RESULT: ' "$console" | tail -n1 | cut -d' ' -f2- || true)
summary="kernel $krel, VM ${t_vm} s (guest uptime ${uptime:-?} s), total $(elapsed) s"
if [[ $res == pass && $host_rc =~ ^(0|77)$ ]]; then
  echo "ktls: PASS ($summary)"
  exit 0
fi
if [[ -z $res ]]; then
  ((qemu_rc == 124 || qemu_rc == 137)) && res="timed out after $timeout_s s" ||
    res="no result line (qemu exit $qemu_rc); console in $console"
fi
[[ $host_rc =~ ^(0|77)$ ]] || res="$res; host self-test exit $host_rc"
echo "ktls: FAIL: $res ($summary)"
exit 1
