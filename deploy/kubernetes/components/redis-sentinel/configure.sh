#!/bin/sh
# Writes this pod's redis.conf and sentinel.conf onto its volume, before either starts. The master is the one
# the Sentinels name now; only when none answers (the first start of the set) is redis-0 the master. So a pod
# that comes back after a failover joins as a replica of the new master, never as a second master.
set -eu
umask 077
conf=/data/conf
mkdir -p "$conf"
self="$(hostname).${SERVICE}.${POD_NAMESPACE}.svc.cluster.local"
quoted() { printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"; }
pass=$(quoted "$REDIS_PASSWORD")

master=""
for i in 0 1 2; do
  peer="redis-$i.${SERVICE}.${POD_NAMESPACE}.svc.cluster.local"
  [ "$peer" = "$self" ] && continue
  master=$(REDISCLI_AUTH="$REDIS_PASSWORD" timeout 3 redis-cli --no-auth-warning -h "$peer" -p 26379 \
    sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1) || master=""
  [ -n "$master" ] && break
done
if [ -z "$master" ]; then
  master="redis-0.${SERVICE}.${POD_NAMESPACE}.svc.cluster.local"
fi

{
  echo "port 6379"
  echo "bind * -::*"
  echo "dir /data"
  echo "requirepass $pass"
  echo "masterauth $pass"
  # persistence: an append-only file fsynced each second (at most a second of writes lost with the node)
  echo "appendonly yes"
  echo "appendfsync everysec"
  echo 'save ""'
  echo "replica-announce-ip $self"
  if [ "$master" != "$self" ]; then
    echo "replicaof $master 6379"
  fi
} > "$conf/redis.conf"

# Sentinel rewrites its file as it learns: written anew at each start, it relearns peers within seconds.
{
  echo "port 26379"
  echo "dir /tmp"
  echo "requirepass $pass"
  echo "sentinel sentinel-pass $pass"
  echo "sentinel resolve-hostnames yes"
  echo "sentinel announce-hostnames yes"
  echo "sentinel announce-ip $self"
  echo "sentinel monitor $MASTER_NAME $master 6379 2"
  echo "sentinel auth-pass $MASTER_NAME $pass"
  # a master silent for 3 s is down; with a quorum of 2 the failover starts within about 4 s, and clients
  # find the new master at their next reconnect (the 503 window measured: tests/e2e/stack/test_redis_failover.py)
  echo "sentinel down-after-milliseconds $MASTER_NAME 3000"
  echo "sentinel failover-timeout $MASTER_NAME 30000"
  echo "sentinel parallel-syncs $MASTER_NAME 1"
} > "$conf/sentinel.conf"
echo "configured $self: master $master"
