#!/bin/sh
# exec: supervisord becomes PID 1, so `docker stop` (SIGTERM) stops nginx and the app at once.
exec supervisord -c /supervisord.conf
