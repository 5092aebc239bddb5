// .ci/run runs the suite on two Nodes (24, then 20 with `npm test`). A test file whose outcome does not depend on the
// Node version (the code under test runs in PHP, nginx or PHP-FPM, and the Node code it reaches is covered on both
// Nodes by other files) needs one of the two runs: .ci/run sets SIDEKICK_TEST_NODE_INDEPENDENT=skip for its Node 24
// run, and such a file skips there, saying why. Unset (`npm test`, any other run), everything runs.
// docs/testing.md lists the files and the reasons.

/** A skip reason in .ci/run's Node 24 run, false anywhere else. `why`: what makes the file Node-independent. */
export function nodeIndependent(why: string): string | false {
  return process.env.SIDEKICK_TEST_NODE_INDEPENDENT === 'skip'
    ? `Node-independent (${why}): run once, in .ci/run's Node 20 run (SIDEKICK_TEST_NODE_INDEPENDENT=skip here)`
    : false;
}

/**
 * The PHP files (client-php*, php-fpm*): what they test runs in php, PHP-FPM and nginx (the client, its extension,
 * FPM's process model); the agent they send to gets the same framed records over the same socket as from the Node
 * client, and its ingest, spool, delivery and hand-over are tested on both Nodes by agent-*.test.ts.
 */
export const PHP_ONE_RUN = nodeIndependent('the PHP client in php and PHP-FPM behind nginx');
