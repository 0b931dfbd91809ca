export { Tokenizer } from './tokenizer.js';
export type { ChatTemplateOptions, DecodeOptions, EncodeOptions, TokenizerFileNames } from './tokenizer.js';
export { StreamDecoder } from './stream.js';
export type { ChatMessage, ChatToolCall } from './chat-template.js';
