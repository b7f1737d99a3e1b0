# Redis round trips from `redis-cli monitor` output: the commands that the connections
# which touched keys of namespace `ns` sent. Commands run inside a script are shown as
# "[<db> lua]" and are not round trips, so they are left out; other clients' traffic (other
# namespaces, our own INFO calls) is not theirs, and the server's keep-alive PING is no
# request's, so they are left out too.
#
#   awk -v ns=NAMESPACE -f client_commands.awk MONITOR_FILE MONITOR_FILE
#
# Prints one line: the total, then COMMAND=count for each command sent.
NR == FNR {
  if ($3 != "lua]" && index($0, "\"" ns ":") > 0) conns[$3] = 1
  next
}
($3 in conns) {
  command = toupper($4)
  gsub(/"/, "", command)
  # The server's once-a-second keep-alive on the same connection, no request's.
  if (command == "PING") next
  count[command]++
  total++
}
END {
  line = total + 0
  for (command in count) line = line " " command "=" count[command]
  print line
}
