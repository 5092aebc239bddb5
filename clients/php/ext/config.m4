dnl The Sidekick agent client as a PHP extension: phpize && ./configure && make (Debian: apt-get install php-dev).
PHP_ARG_ENABLE([sidekick],
  [whether to enable the Sidekick agent client],
  [AS_HELP_STRING([--enable-sidekick], [Enable the Sidekick agent client])],
  [yes])

if test "$PHP_SIDEKICK" != "no"; then
  AC_DEFINE(HAVE_SIDEKICK, 1, [Whether the Sidekick agent client is enabled])
  PHP_NEW_EXTENSION(sidekick, sidekick.c record.c transport.c drops.c settings.c, $ext_shared,, -std=gnu11 -Wall -Wextra -Wno-unused-parameter)
fi
