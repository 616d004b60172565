// Entry point of the demo app (bundled by scripts/build-demo.mjs into gateway/demo/app.js).
import { createRoot } from 'react-dom/client';
import { App } from './App.js';

const root = document.getElementById('root');
if (root) createRoot(root).render(<App />);
