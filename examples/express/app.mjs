// An Express app under `sidekick serve`: an Express app *is* a Node request listener, so export it as it is.
//   cd examples/express && npm install && npx sidekick serve
import express from 'express';
import { getVars, readVars } from 'sidekick-runtime';

const app = express();

app.get('/', async (_req, res) => {
  await getVars('flags'); // waits only until the first publish
  res.json({ flags: readVars('flags') });
});

export default app;
